//! How an operator's reference (`node update db-1`, `service rm web`) selects one object: the
//! one home of the rule, so no command resolves a name its own way.
//!
//! An exact ID wins. Otherwise every object whose name is the reference and every object whose
//! ID starts with it are candidates, and there must be exactly one. Names can be self-chosen
//! (a joining node picks its host name), so a name shared by two objects, or a name that
//! equals another object's ID prefix, is refused as ambiguous rather than resolved to
//! whichever comes first (Docker: "node db-1 is ambiguous (2 matches found)").

use super::ManagerError;

/// Longest part of a reference quoted back in an error.
const QUOTE: usize = 80;

/// Finds the one object `want` refers to: its full ID, else the unique object named `want`
/// or whose ID starts with `want`.
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
    let matches: Vec<&T> = items
        .filter(|x| name(x) == want || (!want.is_empty() && id(x).starts_with(want)))
        .collect();
    let want = crate::util::prefix(want, QUOTE);
    match matches.as_slice() {
        [x] => Ok(x),
        [] => Err(ManagerError::NotFound(format!("{what} {want} not found"))),
        _ => Err(ManagerError::Invalid(format!(
            "{what} {want} is ambiguous ({} matches found); use the full ID (`skep {what} ls`)",
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
            N("abc111", "db-1"),
            N("abd222", "web"),
            N("xyz333", "abc111"),
        ];
        // A full ID wins, even over a node that took it as its name.
        assert_eq!(pick(&all, "abc111"), Ok("abc111"));
        assert_eq!(pick(&all, "db-1"), Ok("abc111"));
        assert_eq!(pick(&all, "abd"), Ok("abd222"));
        assert_eq!(pick(&all, "xyz"), Ok("xyz333"));
        assert!(
            pick(&all, "nope")
                .unwrap_err()
                .contains("node nope not found")
        );
        assert!(pick(&all, "").unwrap_err().contains("not found"));
    }

    #[test]
    fn a_shared_name_is_ambiguous() {
        let all = [N("abc111", "db-1"), N("def222", "db-1"), N("ghi333", "web")];
        let e = pick(&all, "db-1").unwrap_err();
        assert!(
            e.contains("node db-1 is ambiguous (2 matches found)"),
            "{e}"
        );
        assert_eq!(pick(&all, "abc"), Ok("abc111"));
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
