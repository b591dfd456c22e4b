//! Exclude patterns: `*` and `?` match within one path component, `**` across components,
//! `[abc]`, `[a-z]` and `[!a]` match one byte of a set. A pattern without `/` is matched
//! against each file's name; a pattern with `/` against its whole path.

#[derive(Debug, Clone)]
pub struct Glob {
    pattern: Vec<u8>,
    whole_path: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob { pattern: pattern.as_bytes().to_vec(), whole_path: pattern.contains('/') }
    }

    pub fn matches(&self, path: &[u8]) -> bool {
        if self.whole_path {
            matches(&self.pattern, path)
        } else {
            let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
            matches(&self.pattern, name)
        }
    }
}

fn matches(p: &[u8], t: &[u8]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
            (0..=t.len()).any(|i| (i == 0 || t[i - 1] == b'/' || rest.is_empty()) && matches(rest, &t[i..]))
        }
        Some(b'*') => (0..=t.len()).take_while(|&i| i == 0 || t[i - 1] != b'/').any(|i| matches(&p[1..], &t[i..])),
        Some(b'?') => t.first().is_some_and(|&c| c != b'/') && matches(&p[1..], &t[1..]),
        Some(b'[') => match (class(&p[1..]), t.first()) {
            (Some((hit, len)), Some(&c)) => c != b'/' && hit(c) && matches(&p[1 + len..], &t[1..]),
            (None, Some(&c)) => c == b'[' && matches(&p[1..], &t[1..]),
            _ => false,
        },
        Some(&c) => t.first() == Some(&c) && matches(&p[1..], &t[1..]),
    }
}

/// Parse a `[...]` class (after the `[`): a predicate and the bytes it spans, `]` included.
fn class(p: &[u8]) -> Option<(impl Fn(u8) -> bool, usize)> {
    let negate = p.first() == Some(&b'!');
    let start = usize::from(negate);
    let end = start + 1 + p.get(start + 1..)?.iter().position(|&b| b == b']')?;
    let set = p[start..end].to_vec();
    let hit = move |c: u8| {
        let mut i = 0;
        let mut found = false;
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == b'-' {
                found |= (set[i]..=set[i + 2]).contains(&c);
                i += 3;
            } else {
                found |= set[i] == c;
                i += 1;
            }
        }
        found != negate
    };
    Some((hit, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let m = |p: &str, t: &str| Glob::new(p).matches(t.as_bytes());
        assert!(m("*.log", "/var/app/x.log"));
        assert!(!m("*.log", "/var/app/x.log.1"));
        assert!(m("/var/*/x.log", "/var/app/x.log"));
        assert!(!m("/var/*.log", "/var/app/x.log"));
        assert!(m("/var/**/x.log", "/var/a/b/x.log"));
        assert!(m("/var/**", "/var/a/b"));
        assert!(m("cache?", "/h/cache1"));
        assert!(m("[ab]*", "/h/beta"));
        assert!(!m("[!ab]*", "/h/beta"));
        assert!(m("v[0-9]", "/h/v7"));
        assert!(m("node_modules", "/src/node_modules"));
    }
}
