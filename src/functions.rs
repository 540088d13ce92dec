//! Which functions declare `no-writes`, learnt from the `FUNCTION LOAD`
//! bodies the proxy forwards: `CLIENT PAUSE WRITE` lets `FCALL` of such a
//! function through, as Redis does. A function the proxy has not seen
//! loaded counts as one that may write (held by the pause).
//!
//! The library code is Lua; the proxy reads only the registrations:
//! `redis.register_function('name', cb)` (no flags) and the table form
//! `redis.register_function{function_name='name', callback=cb,
//! flags={'no-writes'}}`, taking `function_name` and `flags` at the
//! table's own level.

use parking_lot::Mutex;
use std::collections::HashMap;

/// Functions by name: (library, declares `no-writes`).
#[derive(Default)]
pub struct FunctionFlags {
    by_name: Mutex<HashMap<String, (String, bool)>>,
}

impl FunctionFlags {
    /// `FUNCTION LOAD [REPLACE] code`: the library's functions replace
    /// what was known of it.
    pub fn loaded(&self, code: &[u8]) {
        let code = String::from_utf8_lossy(code);
        let library = library_name(&code);
        let mut map = self.by_name.lock();
        map.retain(|_, (lib, _)| *lib != library);
        for (name, no_writes) in registrations(&code) {
            map.insert(name, (library.clone(), no_writes));
        }
    }

    /// `FUNCTION DELETE library`.
    pub fn deleted(&self, library: &[u8]) {
        let library = String::from_utf8_lossy(library);
        self.by_name.lock().retain(|_, (lib, _)| *lib != library);
    }

    /// `FUNCTION FLUSH` / `FUNCTION RESTORE`: nothing is known any more.
    pub fn forget_all(&self) {
        self.by_name.lock().clear();
    }

    pub fn no_writes(&self, name: &[u8]) -> bool {
        let name = String::from_utf8_lossy(name);
        self.by_name.lock().get(&*name).is_some_and(|(_, ro)| *ro)
    }
}

/// `#!lua name=lib` on the first line.
fn library_name(code: &str) -> String {
    let first = code.lines().next().unwrap_or_default();
    first
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("name="))
        .unwrap_or_default()
        .to_string()
}

/// A Lua string literal at the start of `s` (quotes `'` or `"`, escapes
/// skipped): its contents and the rest after it.
fn string_at(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == q => return Some((&body[..i], &body[i + 1..])),
            _ => {}
        }
    }
    None
}

/// The text up to the `}` closing a table whose `{` was just consumed
/// (strings skipped), and the rest after it.
fn table_body(s: &str) -> Option<(&str, &str)> {
    let mut depth = 1;
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let (_, rest) = string_at(&s[i..])?;
                i = s.len() - rest.len();
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `key = value` pairs at the table's own level: the value text of `key`.
fn field<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    let bytes = table.as_bytes();
    let mut depth = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let (_, rest) = string_at(&table[i..])?;
                i = table.len() - rest.len();
                continue;
            }
            b'{' => depth += 1,
            b'}' => depth -= 1,
            _ if depth == 0
                && table[i..].starts_with(key)
                && (i == 0 || !is_ident(bytes[i - 1])) =>
            {
                let after = table[i + key.len()..].trim_start();
                if let Some(v) = after.strip_prefix('=') {
                    if !v.starts_with('=') {
                        return Some(v.trim_start());
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every function a library registers, with whether it declares
/// `no-writes`.
pub fn registrations(code: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("register_function") {
        rest = rest[at + "register_function".len()..].trim_start();
        let mut call = rest;
        if let Some(r) = call.strip_prefix('(') {
            call = r.trim_start();
        }
        if let Some(r) = call.strip_prefix('{') {
            let Some((table, _)) = table_body(r) else {
                break;
            };
            let name = field(table, "function_name").and_then(string_at);
            let no_writes = field(table, "flags")
                .and_then(|v| v.strip_prefix('{'))
                .and_then(table_body)
                .is_some_and(|(flags, _)| {
                    flags.contains("'no-writes'") || flags.contains("\"no-writes\"")
                });
            if let Some((name, _)) = name {
                out.push((name.to_string(), no_writes));
            }
        } else if let Some((name, _)) = string_at(call) {
            out.push((name.to_string(), false));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_registration_forms() {
        let code = "#!lua name=lib1\n\
            redis.register_function{\n  function_name='f1',\n  callback=function() return {1, {2}} end,\n  flags={'no-writes', 'allow-oom'}\n}\n\
            redis.register_function('f2', function(k) return redis.call('set', k[1], '}') end)\n\
            redis.register_function{function_name=\"f3\", callback=function() return 'flags={\\'no-writes\\'}' end}\n\
            redis.register_function({function_name='f4', flags={\"no-writes\"}, callback=function() end})";
        assert_eq!(
            registrations(code),
            vec![
                ("f1".to_string(), true),
                ("f2".to_string(), false),
                ("f3".to_string(), false),
                ("f4".to_string(), true),
            ]
        );
        assert_eq!(library_name(code), "lib1");
    }

    #[test]
    fn load_replace_delete_and_flush() {
        let f = FunctionFlags::default();
        f.loaded(b"#!lua name=a\nredis.register_function{function_name='x', callback=function() end, flags={'no-writes'}}");
        assert!(f.no_writes(b"x"));
        assert!(!f.no_writes(b"y"), "unknown: may write");
        f.loaded(b"#!lua name=a\nredis.register_function('x', function() end)");
        assert!(!f.no_writes(b"x"), "replaced without the flag");
        f.loaded(b"#!lua name=b\nredis.register_function{function_name='z', callback=function() end, flags={'no-writes'}}");
        f.deleted(b"b");
        assert!(!f.no_writes(b"z"));
        f.loaded(b"#!lua name=b\nredis.register_function{function_name='z', callback=function() end, flags={'no-writes'}}");
        f.forget_all();
        assert!(!f.no_writes(b"z"));
    }
}
