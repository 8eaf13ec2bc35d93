//! How an operator's reference (`node update db-1`, `service rm web`) selects one object: the
//! one home of the rule, so no command resolves a name its own way.
//!
//! An exact ID wins. Otherwise every object whose name is the reference and every object whose
//! ID starts with it are candidates, and there must be exactly one. Names can be self-chosen
//! (a joining node picks its host name), so a name shared by two objects, or a name that
//! equals another object's ID prefix, is refused as ambiguous rather than resolved to
//! whichever comes first (Docker: "node db-1 is ambiguous (2 matches found)").
//!
//! An ID prefix has at least [`MIN_PREFIX`] characters (as git's abbreviated hashes do): with
//! IDs of 25 random letters and digits, one object in 1,296 has an ID starting with `db`, so a
//! service named `db` was ambiguous that often; a name of four characters or more meets a
//! random prefix once in 1.7 million objects.

use super::ManagerError;

/// Longest part of a reference quoted back in an error.
const QUOTE: usize = 80;

/// The fewest characters of an ID that select an object by prefix.
const MIN_PREFIX: usize = 4;

/// Finds the one object `want` refers to: its full ID, else the unique object named `want`
/// or whose ID starts with `want` (of at least [`MIN_PREFIX`] characters).
pub(super) fn find<'a, T>(
    items: impl Iterator<Item = &'a T> + Clone,
    want: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
    what: &str,
) -> Result<&'a T, ManagerError> {
    if let Some(x) = items.clone().find(|x| id(x) == want) {
        return Ok(x);
    }
    let by_prefix = want.chars().count() >= MIN_PREFIX;
    let matches: Vec<&T> = items
        .filter(|x| name(x) == want || (by_prefix && id(x).starts_with(want)))
        .collect();
    let quoted = crate::util::prefix(want, QUOTE);
    match matches.as_slice() {
        [x] => Ok(x),
        [] if !by_prefix && !want.is_empty() => Err(ManagerError::NotFound(format!(
            "{what} {quoted} not found (an ID prefix needs at least {MIN_PREFIX} characters)"
        ))),
        [] => Err(ManagerError::NotFound(format!("{what} {quoted} not found"))),
        _ => Err(ManagerError::Invalid(format!(
            "{what} {quoted} is ambiguous ({} matches found); use the full ID (`skep {what} ls`)",
            matches.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N(&'static str, &'static str);

    fn pick<'a>(all: &'a [N], want: &str) -> Result<&'a str, String> {
        find(all.iter(), want, |n| n.0, |n| n.1, "node")
            .map(|n| n.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn full_id_then_unique_name_or_prefix() {
        let all = [
            N("abcd111", "db-1"),
            N("abde222", "web"),
            N("xyzw333", "abcd111"),
        ];
        // A full ID wins, even over a node that took it as its name.
        assert_eq!(pick(&all, "abcd111"), Ok("abcd111"));
        assert_eq!(pick(&all, "db-1"), Ok("abcd111"));
        assert_eq!(pick(&all, "abde"), Ok("abde222"));
        assert_eq!(pick(&all, "xyzw"), Ok("xyzw333"));
        assert!(
            pick(&all, "nope")
                .unwrap_err()
                .contains("node nope not found")
        );
        assert!(pick(&all, "").unwrap_err().contains("not found"));
    }

    #[test]
    fn a_shared_name_is_ambiguous() {
        let all = [
            N("abcd111", "db-1"),
            N("defg222", "db-1"),
            N("ghij333", "web"),
        ];
        let e = pick(&all, "db-1").unwrap_err();
        assert!(
            e.contains("node db-1 is ambiguous (2 matches found)"),
            "{e}"
        );
        assert_eq!(pick(&all, "abcd"), Ok("abcd111"));
    }

    #[test]
    fn a_short_name_is_never_taken_for_an_id_prefix() {
        // Seen in CI: `service logs db` refused as ambiguous because another service's random
        // ID began with "db".
        let all = [N("6q2q8cmq", "db"), N("db3k5avx", "web")];
        assert_eq!(pick(&all, "db"), Ok("6q2q8cmq"));
        assert_eq!(pick(&all, "db3k"), Ok("db3k5avx"));
        let e = pick(&all, "6q2").unwrap_err();
        assert!(
            e.contains("node 6q2 not found (an ID prefix needs at least 4 characters)"),
            "{e}"
        );
    }

    #[test]
    fn a_name_equal_to_another_id_prefix_is_ambiguous() {
        // The impostor named itself after the prefix an operator would type for abc111.
        let all = [N("abc111", "db-1"), N("def222", "abc1")];
        let e = pick(&all, "abc1").unwrap_err();
        assert!(e.contains("ambiguous (2 matches found)"), "{e}");
        assert_eq!(pick(&all, "abc11"), Ok("abc111"));
    }

    #[test]
    fn errors_quote_a_prefix_of_a_long_reference() {
        let all = [N("abc111", "db-1")];
        let long = "x".repeat(10_000);
        let e = pick(&all, &long).unwrap_err();
        assert!(e.len() < 200, "{e}");
    }
}
