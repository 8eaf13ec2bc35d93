//! The one name rule, Docker's `[A-Za-z0-9][A-Za-z0-9_.-]*`, for services, secrets, networks
//! and stacks; each kind of object sets its own length bound.

/// Why a name breaks the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum NameError {
    /// Nothing was given.
    Empty,
    /// The first character is not a letter or digit.
    Start,
    /// A character other than letters, digits, `_`, `.` and `-`.
    Character,
    /// More bytes than the bound.
    TooLong,
}

impl NameError {
    /// What is wrong, as a phrase that follows the name.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "it is empty",
            Self::Start => "it must start with a letter or digit",
            Self::Character => "it contains a character that is not allowed",
            Self::TooLong => "it is too long",
        }
    }
}

/// Checks `name` against the rule and the bound of `max` bytes, in that order.
pub fn check(name: &str, max: usize) -> Result<(), NameError> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(NameError::Empty),
        Some(c) if !c.is_ascii_alphanumeric() => return Err(NameError::Start),
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(NameError::Character);
    }
    if name.len() > max {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// Whether `name` follows the rule within `max` bytes.
pub fn is_valid(name: &str, max: usize) -> bool {
    check(name, max).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for ok in ["a", "A.b-c_9", "9", "x-"] {
            assert_eq!(check(ok, 10), Ok(()), "{ok}");
        }
        assert_eq!(check("", 10), Err(NameError::Empty));
        for bad in ["_a", "-a", ".a", "éa"] {
            assert_eq!(check(bad, 10), Err(NameError::Start), "{bad}");
        }
        for bad in ["a/b", "a b", "aé"] {
            assert_eq!(check(bad, 10), Err(NameError::Character), "{bad}");
        }
        assert_eq!(check(&"x".repeat(11), 10), Err(NameError::TooLong));
        assert!(is_valid(&"x".repeat(10), 10));
    }
}
