//! Problems the TOML parser and serde report (syntax, duplicate keys, wrong types, unknown
//! fields), named by the TOML path of the key they are about, as the checkers name theirs.
//!
//! `toml` gives the span of the offending key or value but not its path (it keeps the keys,
//! without array indices, for its own multi-line rendering only), so the path is looked up in
//! the document as far as it parses.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Checker;

/// Report `e`, the reason `text` could not be read into the raw configuration.
pub(super) fn report(c: &mut Checker, text: &str, e: &toml::de::Error) {
    let span = e.span().unwrap_or(0..0);
    let mut message = e.message().trim().to_owned();
    // Recovery keeps what it can: the first of two duplicate keys, the tables around an error.
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut search = Search {
        text,
        offset: span.start,
        header: (0, String::new(), doc.get_ref()),
    };
    let mut key = search.table(doc.get_ref(), "").unwrap_or_default();
    // A second definition of a key is not in the document: it belongs to the table whose
    // header comes last before it, and its name is the text of the span.
    let duplicate = text
        .get(span.clone())
        .map(|k| k.trim().trim_matches(['"', '\'']))
        .filter(|k| key.is_empty() && !k.is_empty() && message.starts_with("duplicate key"));
    if let Some(name) = duplicate {
        let (_, path, table) = &search.header;
        key = join(path, name);
        let first = table
            .iter()
            .find(|(k, _)| k.get_ref() == name && k.span().start < span.start);
        if let Some((k, _)) = first {
            message = format!(
                "{message}: first defined on line {}",
                c.line(k.span().start)
            );
        }
    }
    c.err(span, key, message);
}

/// A search of the document for the key or value at `offset`.
struct Search<'a, 'i> {
    text: &'a str,
    offset: usize,
    /// The start, path and contents of the table (`[x]` or `[[x]]`) whose header is the last
    /// one before `offset`; the root table before any.
    header: (usize, String, &'a DeTable<'i>),
}

impl<'a, 'i> Search<'a, 'i> {
    /// The path of the key or value of `table` (or below it) at the offset.
    fn table(&mut self, table: &'a DeTable<'i>, prefix: &str) -> Option<String> {
        for (k, v) in table.iter() {
            let path = join(prefix, k.get_ref());
            if k.span().contains(&self.offset) {
                return Some(path);
            }
            if let Some(found) = self.value(v, &path) {
                return Some(found);
            }
        }
        None
    }

    /// The path in `v` (named `path`) at the offset.
    fn value(&mut self, v: &'a Spanned<DeValue<'i>>, path: &str) -> Option<String> {
        let span = v.span();
        let inside = span.contains(&self.offset);
        match v.get_ref() {
            DeValue::Table(t) => {
                // The span of a table is its header, or `{ ... }` inline, or the key of a dotted
                // key's implicit table: only a header is followed by the table's keys.
                let header = self.text.as_bytes().get(span.start) == Some(&b'[');
                if header && span.start <= self.offset && span.start >= self.header.0 {
                    self.header = (span.start, path.to_owned(), t);
                }
                self.table(t, path)
                    .or_else(|| inside.then(|| path.to_owned()))
            }
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    // Tables in an array are numbered, like `link[1]`; plain values are named
                    // by their array's key, like `link[1].targets`.
                    let path = match e.get_ref() {
                        DeValue::Table(_) => format!("{path}[{i}]"),
                        _ => path.to_owned(),
                    };
                    if let Some(found) = self.value(e, &path) {
                        return Some(found);
                    }
                }
                inside.then(|| path.to_owned())
            }
            _ => inside.then(|| path.to_owned()),
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}
