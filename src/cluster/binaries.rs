//! Finding the Postgres server binaries (`initdb`, `postgres`, `pg_basebackup`, `psql`, ...).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClusterError;

/// Environment variable that, when set, names the directory holding the Postgres binaries.
pub const BINDIR_ENV: &str = "SLUICE_PG_BINDIR";

/// Where Debian and Ubuntu install one directory per Postgres major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The directory holding the Postgres server binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// Directory containing `initdb`, `postgres`, `pg_basebackup`, `pg_isready`, `psql`, ...
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: the `SLUICE_PG_BINDIR` environment variable if set, else
    /// `pg_config --bindir` (only if that directory has both `initdb` and `postgres`), else the
    /// highest-numbered `/usr/lib/postgresql/*/bin` that has them.
    ///
    /// The error says how to install Postgres when nothing is found.
    pub fn locate() -> Result<Self, ClusterError> {
        if let Some(dir) = std::env::var_os(BINDIR_ENV).filter(|d| !d.is_empty()) {
            let bindir = PathBuf::from(dir);
            return if has_server_binaries(&bindir) {
                Ok(PgBinaries { bindir })
            } else {
                Err(ClusterError::BinariesNotFound(format!(
                    "{BINDIR_ENV}={} does not contain both `initdb` and `postgres`",
                    bindir.display()
                )))
            };
        }
        if let Some(bindir) = from_pg_config() {
            return Ok(PgBinaries { bindir });
        }
        if let Some(bindir) = highest_debian_bindir(Path::new(DEBIAN_ROOT)) {
            return Ok(PgBinaries { bindir });
        }
        Err(ClusterError::BinariesNotFound(format!(
            "{BINDIR_ENV} is not set, `pg_config --bindir` gave no usable directory and no \
             {DEBIAN_ROOT}/*/bin has `initdb` and `postgres`"
        )))
    }

    /// Uses `bindir` as is, checking only that it holds `initdb` and `postgres`.
    pub fn at(bindir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let bindir = bindir.into();
        if has_server_binaries(&bindir) {
            Ok(PgBinaries { bindir })
        } else {
            Err(ClusterError::BinariesNotFound(format!(
                "{} does not contain both `initdb` and `postgres`",
                bindir.display()
            )))
        }
    }

    /// Path of the tool `name` (e.g. `"psql"`) in [`bindir`](Self::bindir); not checked to exist.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The server's version line, as printed by `postgres --version`.
    pub fn version(&self) -> Result<String, ClusterError> {
        let tool = self.tool("postgres");
        let out = Command::new(&tool)
            .arg("--version")
            .output()
            .map_err(|e| ClusterError::io(format!("running {}", tool.display()), e))?;
        if !out.status.success() {
            return Err(ClusterError::CommandFailed {
                command: format!("{} --version", tool.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Whether `dir` has both `initdb` and `postgres`.
fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// `pg_config --bindir`, if it runs and names a directory with the server binaries.
fn from_pg_config() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    has_server_binaries(&dir).then_some(dir)
}

/// The `bin` directory of the highest major version under `root` that has the server binaries.
fn highest_debian_bindir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = version_key(name.to_str()?)?;
            let bindir = entry.path().join("bin");
            has_server_binaries(&bindir).then_some((version, bindir))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, dir)| dir)
}

/// Sort key for a version directory name such as `15` or `9.6`; `None` if not numeric.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}
