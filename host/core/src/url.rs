//! URL pieces the worker socket and HTTP services both read: query strings and path segments,
//! decoded with the rust-url project's crates rather than by hand.

use std::collections::HashMap;

/// Query string → map (`+` is a space, `%XX` decoded); one value per key, the last one wins.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// One percent-encoded path segment, decoded (invalid UTF-8 is replaced; `+` stays `+`).
pub fn decode_path_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_decoding() {
        let q = parse_query("a=1&b=hello%20world&a=2&c&d=x+y");
        assert_eq!(q["a"], "2");
        assert_eq!(q["b"], "hello world");
        assert_eq!(q["c"], "");
        assert_eq!(q["d"], "x y");
        assert_eq!(decode_path_segment("%E2%9C%93%zz"), "✓%zz");
        assert_eq!(decode_path_segment("a+b"), "a+b");
    }
}
