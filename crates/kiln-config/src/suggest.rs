//! "Did you mean …?": picks the closest known name for a misspelt one.
//!
//! Uses the Damerau–Levenshtein distance (a swapped pair of letters, as in `nmae`, counts as
//! one edit), case-insensitively. A candidate is offered only when it is within a third of the
//! longer name's length (at least one edit), so short unrelated names are not suggested.

/// The closest candidate to `input`, if any is close enough. Ties go to the earlier candidate.
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_lower = input.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == input {
            continue;
        }
        let distance = strsim::damerau_levenshtein(&input_lower, &candidate.to_lowercase());
        let longest = input.chars().count().max(candidate.chars().count());
        if distance > (longest / 3).max(1) {
            continue;
        }
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// `` `a`, `b` and `c` `` for help texts.
pub(crate) fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The help for an unknown name: a suggestion when one is close, else the valid names.
pub(crate) fn help(input: &str, candidates: &[&str]) -> String {
    match closest(input, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("expected {}", list(candidates)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_transpositions_and_typos() {
        let keys = [
            "name",
            "source",
            "ssh",
            "shutdown",
            "provision",
            "test",
            "output",
        ];
        assert_eq!(closest("nmae", keys), Some("name"));
        assert_eq!(closest("provison", keys), Some("provision"));
        assert_eq!(closest("Output", keys), Some("output"));
        assert_eq!(closest("sssh", keys), Some("ssh"));
        assert_eq!(closest("zzz", keys), None);
        assert_eq!(closest("to", ["os"]), None);
    }

    #[test]
    fn lists_names() {
        assert_eq!(list(&["a"]), "`a`");
        assert_eq!(list(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
