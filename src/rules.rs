//! The rule matcher: which newly created names are routed to which area.
//!
//! A rule matches a whole file name (never a path) with a glob or a regex,
//! optionally restricted to files or directories. Globs are compiled to
//! anchored regexes once at start, so matching on the request path is a
//! single automaton run.

use std::time::Duration;

use regex::bytes::Regex;

/// What kind of object a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Any,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "file" => Ok(Kind::File),
            "dir" | "directory" => Ok(Kind::Dir),
            "any" => Ok(Kind::Any),
            other => Err(format!(
                "invalid kind '{other}' (expected file, dir or any)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Any => "any",
        }
    }

    pub fn admits(self, is_dir: bool) -> bool {
        match self {
            Kind::Any => true,
            Kind::File => !is_dir,
            Kind::Dir => is_dir,
        }
    }
}

/// One routing rule, with its target already resolved to a directory index
/// in the redirect table's list of areas.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// The pattern as the operator wrote it, for the `config` control file.
    pub pattern: String,
    pub is_regex: bool,
    pub kind: Kind,
    pub target: std::path::PathBuf,
    pub retention: Option<Duration>,
    re: Regex,
}

impl Rule {
    pub fn new(
        name: &str,
        pattern: &str,
        is_regex: bool,
        kind: Kind,
        target: std::path::PathBuf,
        retention: Option<Duration>,
    ) -> Result<Rule, String> {
        let src = if is_regex {
            format!("^(?:{pattern})$")
        } else {
            glob_to_regex(pattern)?
        };
        let re = Regex::new(&src).map_err(|e| {
            // The regex crate explains over several lines; keep the last,
            // which says what is wrong, so the error stays one line.
            let text = e.to_string();
            let why = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let why = why.trim().trim_start_matches("error: ");
            format!("rule '{name}': invalid pattern '{pattern}': {why}")
        })?;
        Ok(Rule {
            name: name.to_string(),
            pattern: pattern.to_string(),
            is_regex,
            kind,
            target,
            retention,
            re,
        })
    }

    pub fn matches_name(&self, name: &[u8]) -> bool {
        self.re.is_match(name)
    }
}

/// Translates a shell glob (`*`, `?`, `[...]`) to an anchored regex.
pub fn glob_to_regex(glob: &str) -> Result<String, String> {
    if glob.is_empty() {
        return Err("empty glob pattern".into());
    }
    if glob.contains('/') {
        return Err(format!(
            "glob '{glob}' contains '/': rules match names, not paths"
        ));
    }
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // As a shell's: any bytes, a newline and bytes that are not
            // UTF-8 too (names are bytes); `?` is one character, or one
            // such byte.
            '*' => out.push_str("(?s-u:.)*"),
            '?' => out.push_str("(?s:.|(?-u:[\\x80-\\xff]))"),
            '[' => {
                let mut class = String::from("[");
                if chars.peek() == Some(&'!') {
                    chars.next();
                    class.push('^');
                }
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == ']' {
                        closed = true;
                        break;
                    }
                    if d == '\\' || d == '[' {
                        class.push('\\');
                    }
                    class.push(d);
                }
                if !closed {
                    return Err(format!("glob '{glob}' has an unclosed '['"));
                }
                class.push(']');
                out.push_str(&class);
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    Ok(out)
}

/// The ordered rule list; the first rule that matches wins.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// The index of the first rule that routes `name` of the given kind.
    pub fn route(&self, name: &[u8], is_dir: bool) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.kind.admits(is_dir) && r.matches_name(name))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, kind: Kind) -> Rule {
        Rule::new("t", p, false, kind, "/x".into(), None).unwrap()
    }

    #[test]
    fn globs_match_whole_names() {
        let r = rule("casa-*.log", Kind::File);
        assert!(r.matches_name(b"casa-20260101-120000.log"));
        assert!(!r.matches_name(b"casa-1.log.bak"));
        assert!(!r.matches_name(b"xcasa-1.log"));
        let r = rule("TMPPOINTING*", Kind::Any);
        assert!(r.matches_name(b"TMPPOINTING1700000000"));
        assert!(!r.matches_name(b"POINTING"));
        let r = rule("a?[bc][!d].txt", Kind::Any);
        assert!(r.matches_name(b"axbe.txt"));
        assert!(!r.matches_name(b"axbd.txt"));
        assert!(!r.matches_name(b"axbe.txt2"));
    }

    #[test]
    fn globs_match_names_that_are_not_text() {
        let r = rule("casa-*.log", Kind::File);
        assert!(r.matches_name(b"casa-\xff\xfe.log"));
        assert!(r.matches_name(b"casa-a\nb.log"));
        let r = rule("TMP?", Kind::Any);
        assert!(r.matches_name("TMPé".as_bytes()));
        assert!(r.matches_name(b"TMP\n"));
        assert!(r.matches_name(b"TMP\xff"));
        assert!(!r.matches_name(b"TMP\xff\xff"));
        assert!(!r.matches_name(b"TMP"));
    }

    #[test]
    fn regex_metacharacters_in_globs_are_literal() {
        let r = rule("a+b(c).log", Kind::Any);
        assert!(r.matches_name(b"a+b(c).log"));
        assert!(!r.matches_name(b"aab(c).log"));
    }

    #[test]
    fn kind_restricts_routing() {
        let set = RuleSet {
            rules: vec![rule("casa-*.log", Kind::File), rule("T*", Kind::Dir)],
        };
        assert_eq!(set.route(b"casa-1.log", false), Some(0));
        assert_eq!(set.route(b"casa-1.log", true), None);
        assert_eq!(set.route(b"TMP", true), Some(1));
        assert_eq!(set.route(b"TMP", false), None);
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(glob_to_regex("a[bc").is_err());
        assert!(glob_to_regex("a/b").is_err());
        assert!(glob_to_regex("").is_err());
        assert!(Rule::new("r", "(", true, Kind::Any, "/x".into(), None).is_err());
    }
}
