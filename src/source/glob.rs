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

/// Whether pattern `p` matches all of `t`. Every (pattern position, text position) pair is
/// decided once and remembered, so a pattern of many stars (`*a*a*a*b`) costs at most
/// |p| × |t|² steps instead of exponentially many.
fn matches(p: &[u8], t: &[u8]) -> bool {
    let mut memo = vec![None; (p.len() + 1) * (t.len() + 1)];
    Matcher { p, t, memo: &mut memo }.at(0, 0)
}

struct Matcher<'a> {
    p: &'a [u8],
    t: &'a [u8],
    memo: &'a mut [Option<bool>],
}

impl Matcher<'_> {
    fn at(&mut self, pi: usize, ti: usize) -> bool {
        let slot = pi * (self.t.len() + 1) + ti;
        if let Some(known) = self.memo[slot] {
            return known;
        }
        let found = self.decide(pi, ti);
        self.memo[slot] = Some(found);
        found
    }

    fn decide(&mut self, pi: usize, ti: usize) -> bool {
        let (p, t) = (self.p, self.t);
        match p.get(pi) {
            None => ti == t.len(),
            Some(b'*') if p.get(pi + 1) == Some(&b'*') => {
                let rest = if p.get(pi + 2) == Some(&b'/') { pi + 3 } else { pi + 2 };
                (ti..=t.len()).any(|i| (i == ti || t[i - 1] == b'/' || rest == p.len()) && self.at(rest, i))
            }
            Some(b'*') => (ti..=t.len()).take_while(|&i| i == ti || t[i - 1] != b'/').any(|i| self.at(pi + 1, i)),
            Some(b'?') => t.get(ti).is_some_and(|&c| c != b'/') && self.at(pi + 1, ti + 1),
            Some(b'[') => match (class(&p[pi + 1..]), t.get(ti)) {
                (Some((hit, len)), Some(&c)) => c != b'/' && hit(c) && self.at(pi + 1 + len, ti + 1),
                (None, Some(&c)) => c == b'[' && self.at(pi + 1, ti + 1),
                _ => false,
            },
            Some(&c) => t.get(ti) == Some(&c) && self.at(pi + 1, ti + 1),
        }
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
        assert!(m("**/b", "/a/b") && m("/a/**/c", "/a/c") && !m("/a/**/c", "/ab/c"));
    }

    #[test]
    fn many_stars_take_polynomial_time() {
        // With backtracking alone this did not finish (about C(200, 20) attempts); with
        // each position pair decided once it is a few hundred thousand steps.
        let pattern = "*a".repeat(20) + "*b";
        let name = "a".repeat(200);
        assert!(!Glob::new(&pattern).matches(name.as_bytes()));
        assert!(Glob::new(&pattern).matches(format!("{name}b").as_bytes()));
    }
}
