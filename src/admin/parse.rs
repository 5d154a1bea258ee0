//! Reading admin commands: one query string may hold several commands separated by `;`; each is
//! a few case-insensitive words. Pure: no state, no IO.

use super::AdminError;

/// What a SHOW command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowWhat {
    /// `SHOW POOLS`
    Pools,
    /// `SHOW STATS`
    Stats,
    /// `SHOW CLIENTS`
    Clients,
    /// `SHOW SERVERS`
    Servers,
    /// `SHOW DATABASES`
    Databases,
    /// `SHOW CONFIG`
    Config,
    /// `SHOW VERSION`
    Version,
    /// `SHOW REPLICAS`
    Replicas,
    /// `SHOW CACHE`
    Cache,
    /// `SHOW ADVICE`
    Advice,
    /// `SHOW HELP`
    Help,
}

impl ShowWhat {
    const ALL: [(&'static str, ShowWhat); 11] = [
        ("POOLS", ShowWhat::Pools),
        ("STATS", ShowWhat::Stats),
        ("CLIENTS", ShowWhat::Clients),
        ("SERVERS", ShowWhat::Servers),
        ("DATABASES", ShowWhat::Databases),
        ("CONFIG", ShowWhat::Config),
        ("VERSION", ShowWhat::Version),
        ("REPLICAS", ShowWhat::Replicas),
        ("CACHE", ShowWhat::Cache),
        ("ADVICE", ShowWhat::Advice),
        ("HELP", ShowWhat::Help),
    ];

    /// The word after SHOW, uppercase.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, w)| *w == self).map_or("?", |(n, _)| n)
    }
}

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW what`
    Show(ShowWhat),
    /// `RELOAD`
    Reload,
    /// `SHUTDOWN`
    Shutdown,
    /// `PAUSE [db]`
    Pause(Option<String>),
    /// `RESUME [db]`
    Resume(Option<String>),
    /// `KILL db`
    Kill(String),
    /// `SET key = value` (or `SET key TO value`)
    Set {
        /// The configuration key, e.g. `pool.size`.
        key: String,
        /// The value as written, quotes removed.
        value: String,
    },
    /// `CACHE CLEAR`
    CacheClear,
}

/// Splits a query string into its commands at `;` outside quotes, dropping empty ones.
pub fn split(query: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    for (i, c) in query.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ';') => {
                out.push(&query[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&query[start..]);
    out.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// Reads one command (without its `;`).
///
/// # Errors
/// [`AdminError::Syntax`] naming the command when it is not one the console knows or its
/// arguments are wrong.
pub fn parse(text: &str) -> Result<Command, AdminError> {
    let syntax = || AdminError::Syntax(text.trim().to_owned());
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some(first) = words.first() else { return Err(syntax()) };
    let verb = first.to_ascii_uppercase();
    let args = &words[1..];
    let at_most_one = |args: &[&str]| match args {
        [] => Ok(None),
        [db] => Ok(Some(unquote(db))),
        _ => Err(syntax()),
    };
    match verb.as_str() {
        "SHOW" => match args {
            [what] => ShowWhat::ALL
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(what))
                .map(|(_, w)| Command::Show(*w))
                .ok_or_else(syntax),
            _ => Err(syntax()),
        },
        "RELOAD" if args.is_empty() => Ok(Command::Reload),
        "SHUTDOWN" if args.is_empty() => Ok(Command::Shutdown),
        "PAUSE" => at_most_one(args).map(Command::Pause),
        "RESUME" => at_most_one(args).map(Command::Resume),
        "KILL" => match args {
            [db] => Ok(Command::Kill(unquote(db))),
            _ => Err(syntax()),
        },
        "CACHE" => match args {
            [w] if w.eq_ignore_ascii_case("CLEAR") => Ok(Command::CacheClear),
            _ => Err(syntax()),
        },
        "SET" => parse_set(text.trim()[first.len()..].trim()).ok_or_else(syntax),
        _ => Err(syntax()),
    }
}

/// `key = value` or `key TO value`; the value may be quoted.
fn parse_set(rest: &str) -> Option<Command> {
    let (key, value) = match rest.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => {
            let (k, v) = rest.split_once(char::is_whitespace)?;
            let v = v.trim_start();
            let to = v.get(..2).filter(|t| t.eq_ignore_ascii_case("TO"))?;
            (k.trim(), v[to.len()..].trim())
        }
    };
    if key.is_empty() || key.contains(char::is_whitespace) || value.is_empty() {
        return None;
    }
    Some(Command::Set { key: key.to_ascii_lowercase(), value: unquote(value) })
}

/// Removes one pair of matching single or double quotes.
fn unquote(s: &str) -> String {
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_commands_are_case_insensitive() {
        assert_eq!(parse("SHOW POOLS").unwrap(), Command::Show(ShowWhat::Pools));
        assert_eq!(parse("show   replicas").unwrap(), Command::Show(ShowWhat::Replicas));
        assert_eq!(parse("Show Cache").unwrap(), Command::Show(ShowWhat::Cache));
        for (name, what) in ShowWhat::ALL {
            assert_eq!(parse(&format!("show {name}")).unwrap(), Command::Show(what));
            assert_eq!(what.name(), name);
        }
    }

    #[test]
    fn semicolons_split_commands_outside_quotes() {
        assert_eq!(split("SHOW POOLS;"), ["SHOW POOLS"]);
        assert_eq!(split(" show stats ; show pools ;; "), ["show stats", "show pools"]);
        assert_eq!(split("SET a = 'x;y'; RELOAD"), ["SET a = 'x;y'", "RELOAD"]);
        assert!(split(" ; ").is_empty());
    }

    #[test]
    fn control_commands_take_their_arguments() {
        assert_eq!(parse("reload").unwrap(), Command::Reload);
        assert_eq!(parse("SHUTDOWN").unwrap(), Command::Shutdown);
        assert_eq!(parse("pause").unwrap(), Command::Pause(None));
        assert_eq!(parse("PAUSE app").unwrap(), Command::Pause(Some("app".into())));
        assert_eq!(parse("RESUME \"app\"").unwrap(), Command::Resume(Some("app".into())));
        assert_eq!(parse("resume app").unwrap(), Command::Resume(Some("app".into())));
        assert_eq!(parse("KILL app").unwrap(), Command::Kill("app".into()));
        assert_eq!(parse("cache clear").unwrap(), Command::CacheClear);
    }

    #[test]
    fn set_reads_key_and_value() {
        let set = |k: &str, v: &str| Command::Set { key: k.into(), value: v.into() };
        assert_eq!(parse("SET pool.size = 30").unwrap(), set("pool.size", "30"));
        assert_eq!(parse("set pool.query_wait_timeout='5s'").unwrap(), set("pool.query_wait_timeout", "5s"));
        assert_eq!(parse("SET Pool.Size TO 7").unwrap(), set("pool.size", "7"));
        assert!(parse("SET pool.size").is_err());
        assert!(parse("SET = 3").is_err());
    }

    #[test]
    fn bad_commands_are_named_in_the_error() {
        for bad in ["SHOW", "SHOW POOLS EXTRA", "SHOW NOTHING", "KILL", "RELOAD now", "SELECT 1", "CACHE"] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, AdminError::Syntax(_)), "{bad}");
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }
}
