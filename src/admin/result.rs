//! The replies the admin console builds: a [`ResultSet`] (RowDescription, DataRows,
//! CommandComplete) and the other server messages a simple query may end with. Every value is
//! sent in text format; a column's type only tells clients how to read the text.

use crate::protocol::backend::{put_cstr, put_message};
use bytes::{BufMut, BytesMut};

/// The type a column is announced with (the values are always sent as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `text`
    Text,
    /// `int8`
    Int,
    /// `float8`
    Float,
}

impl ColumnType {
    /// The type's OID and size as RowDescription carries them.
    fn oid_and_len(self) -> (u32, i16) {
        match self {
            ColumnType::Text => (25, -1),
            ColumnType::Int => (20, 8),
            ColumnType::Float => (701, 8),
        }
    }
}

/// One column of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The column name clients see.
    pub name: &'static str,
    /// How clients should read its values.
    pub kind: ColumnType,
}

/// A text column.
pub const fn text(name: &'static str) -> Column {
    Column { name, kind: ColumnType::Text }
}

/// An integer column.
pub const fn int(name: &'static str) -> Column {
    Column { name, kind: ColumnType::Int }
}

/// A floating-point column.
pub const fn float(name: &'static str) -> Column {
    Column { name, kind: ColumnType::Float }
}

/// One value of a row, in text form; `None` is SQL NULL.
pub type Value = Option<String>;

/// Builds a row value by value.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a text value.
    pub fn text(mut self, v: impl Into<String>) -> Self {
        self.0.push(Some(v.into()));
        self
    }

    /// Appends any value shown through its `Display` (numbers).
    pub fn num(mut self, v: impl std::fmt::Display) -> Self {
        self.0.push(Some(v.to_string()));
        self
    }

    /// Appends a value that may be NULL.
    pub fn opt(mut self, v: Option<impl Into<String>>) -> Self {
        self.0.push(v.map(Into::into));
        self
    }

    /// Appends a NULL.
    pub fn null(mut self) -> Self {
        self.0.push(None);
        self
    }
}

/// A whole result: columns, rows and the command tag of its CommandComplete.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    /// The columns.
    pub columns: &'static [Column],
    /// The rows; each has exactly one value per column.
    pub rows: Vec<Row>,
    /// The CommandComplete tag, e.g. "SHOW".
    pub tag: &'static str,
}

impl ResultSet {
    /// A SHOW result.
    pub fn show(columns: &'static [Column], rows: Vec<Row>) -> Self {
        Self { columns, rows, tag: "SHOW" }
    }

    /// Encodes RowDescription, the DataRows and CommandComplete into `buf`.
    ///
    /// # Panics
    /// In debug builds, when a row does not have one value per column.
    pub fn encode(&self, buf: &mut BytesMut) {
        row_description(buf, self.columns);
        for row in &self.rows {
            debug_assert_eq!(row.0.len(), self.columns.len(), "row width of a {} result", self.tag);
            data_row(buf, &row.0);
        }
        command_complete(buf, self.tag);
    }
}

/// What one command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A result set.
    Rows(ResultSet),
    /// Only a CommandComplete with this tag ("RELOAD", "SET", ...), after an optional notice.
    Done {
        /// The tag.
        tag: &'static str,
        /// A NOTICE sent before it.
        notice: Option<String>,
    },
}

impl Reply {
    /// A reply with only a command tag.
    pub fn done(tag: &'static str) -> Self {
        Reply::Done { tag, notice: None }
    }

    /// Encodes the reply into `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Reply::Rows(rs) => rs.encode(buf),
            Reply::Done { tag, notice: n } => {
                if let Some(n) = n {
                    notice(buf, n);
                }
                command_complete(buf, tag);
            }
        }
    }
}

/// RowDescription ('T') for text-format columns.
pub fn row_description(buf: &mut BytesMut, columns: &[Column]) {
    put_message(buf, b'T', |b| {
        b.put_u16(columns.len() as u16);
        for c in columns {
            let (oid, len) = c.kind.oid_and_len();
            put_cstr(b, c.name);
            b.put_u32(0); // table OID
            b.put_i16(0); // column number
            b.put_u32(oid);
            b.put_i16(len);
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow ('D').
pub fn data_row(buf: &mut BytesMut, values: &[Value]) {
    put_message(buf, b'D', |b| {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// CommandComplete ('C') with its tag.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    put_message(buf, b'C', |b| put_cstr(b, tag));
}

/// EmptyQueryResponse ('I'): the answer to a query string with no command.
pub fn empty_query(buf: &mut BytesMut) {
    put_message(buf, b'I', |_| {});
}

/// NoticeResponse ('N') at severity NOTICE.
pub fn notice(buf: &mut BytesMut, message: &str) {
    put_message(buf, b'N', |b| {
        for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', message)] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits an encoded buffer into (tag, body) messages.
    fn messages(buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let len = u32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap()) as usize;
            out.push((buf[pos], buf[pos + 5..pos + 1 + len].to_vec()));
            pos += 1 + len;
        }
        out
    }

    #[test]
    fn result_set_encodes_description_rows_and_tag() {
        const COLS: &[Column] = &[text("name"), int("n")];
        let rs = ResultSet::show(COLS, vec![Row::new().text("a").num(7), Row::new().null().num(0)]);
        let mut buf = BytesMut::new();
        rs.encode(&mut buf);
        let m = messages(&buf);
        assert_eq!(m.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"TDDC");
        let t = &m[0].1;
        assert_eq!(&t[..2], &[0, 2]);
        assert_eq!(&t[2..7], b"name\0");
        // type OID of the first column: text (25)
        assert_eq!(&t[7 + 6..7 + 10], &25u32.to_be_bytes());
        assert_eq!(m[1].1, [&[0u8, 2, 0, 0, 0, 1][..], b"a", &[0, 0, 0, 1], b"7"].concat());
        assert_eq!(m[2].1, [&[0u8, 2, 0xff, 0xff, 0xff, 0xff][..], &[0, 0, 0, 1], b"0"].concat());
        assert_eq!(m[3].1, b"SHOW\0");
    }

    #[test]
    fn empty_query_and_notice_are_well_formed() {
        let mut buf = BytesMut::new();
        empty_query(&mut buf);
        notice(&mut buf, "hi");
        let m = messages(&buf);
        assert_eq!((m[0].0, m[0].1.len()), (b'I', 0));
        assert_eq!(m[1].0, b'N');
        assert!(m[1].1.ends_with(b"Mhi\0\0"));
    }
}
