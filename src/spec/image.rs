//! The one image-reference grammar, Docker's (distribution/reference):
//! `[domain[:port]/]path[/path...][:tag][@algorithm:hex]`. A domain is DNS components, an
//! IPv4 address or a bracketed IPv6 literal, with an optional port; path components are
//! lower case; a name is at most 255 bytes and a tag 128. The whole reference is bounded at
//! 512 bytes. Nothing is pulled or resolved.

/// The longest reference accepted (a 255-byte name, a 128-byte tag and a digest fit).
pub const MAX_IMAGE_BYTES: usize = 512;
/// The longest name (domain and path), as Docker.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest tag, as Docker.
pub const MAX_TAG_BYTES: usize = 128;

/// Why a reference breaks the grammar, in the words `docker` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Nothing was given.
    #[error("the image is empty")]
    Empty,
    /// Longer than [`MAX_IMAGE_BYTES`].
    #[error("too long")]
    TooLong,
    /// The part after `@` is not `algorithm:hex`.
    #[error("invalid digest (expected @sha256:<hex>)")]
    Digest,
    /// The part after the last `:` is not a tag.
    #[error("invalid reference format: a tag is letters, digits, '_', '.' and '-'")]
    Tag,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("invalid reference format: repository name must not be more than 255 characters")]
    NameTooLong,
    /// The first component looks like a registry but is not one.
    #[error("invalid reference format: bad registry host")]
    Registry,
    /// A path component has upper-case letters.
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    /// A path component is not `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
    #[error(
        "invalid reference format: a repository name is lower-case letters, digits and single \
         separators ('.', '_', '__', '-')"
    )]
    Path,
}

/// Checks `image` against the grammar, saying which part is wrong.
pub fn check(image: &str) -> Result<(), ImageError> {
    if image.is_empty() {
        return Err(ImageError::Empty);
    }
    if image.len() > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLong);
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest
        && !digest_ok(d)
    {
        return Err(ImageError::Digest);
    }
    // The tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag
        && !tag_ok(t)
    {
        return Err(ImageError::Tag);
    }
    if name.is_empty() {
        return Err(ImageError::Path);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ImageError::NameTooLong);
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && is_domain(parts[0]) {
        if !domain_ok(parts[0]) {
            return Err(ImageError::Registry);
        }
        parts.remove(0);
    }
    for part in parts {
        if part.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageError::Uppercase);
        }
        if !path_component_ok(part) {
            return Err(ImageError::Path);
        }
    }
    Ok(())
}

/// Docker reads the first of several components as a registry when it has a `.`, a `:` or a
/// `[`, is `localhost`, or has upper-case letters (a path never does).
fn is_domain(first: &str) -> bool {
    first.contains(['.', ':', '['])
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(p: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = p.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]`: DNS components (no empty one, none starting or ending with `-`) or
/// `[ipv6]`, and a port of digits.
fn domain_ok(d: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    if let Some(rest) = d.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return false;
        }
        return after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
    }
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if port.is_some_and(|p| !port_ok(p)) {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag_ok(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    t.len() <= MAX_TAG_BYTES
        && chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `algorithm:hex`, algorithm components `[A-Za-z][A-Za-z0-9]*` joined by `+`, `.`, `-` or
/// `_`; sha256 needs exactly 64 lower-case hex digits (as Docker validates it), others at
/// least 32.
fn digest_ok(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg.split(['+', '.', '-', '_']).all(|c| {
            c.chars().next().is_some_and(|f| f.is_ascii_alphabetic())
                && c.chars().all(|ch| ch.is_ascii_alphanumeric())
        });
    if !alg_ok {
        return false;
    }
    if alg == "sha256" {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    } else {
        hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_docker_accepts() {
        for good in [
            "nginx",
            "nginx:1.27-alpine",
            "library/nginx",
            "docker.io/library/nginx:latest",
            "localhost:5000/a/b_c__d.e-f---g:v1",
            "localhost/x",
            "registry.example.com/a/b_c__d-e:latest",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        assert_eq!(check(&format!("alpine@sha256:{SHA}")), Ok(()));
        assert_eq!(check(&format!("alpine:3@sha256:{SHA}")), Ok(()));
    }

    #[test]
    fn references_docker_refuses() {
        for (bad, why) in [
            ("", ImageError::Empty),
            ("UPPER:case", ImageError::Uppercase),
            ("Nginx", ImageError::Uppercase),
            ("nginx:", ImageError::Tag),
            ("nginx:-x", ImageError::Tag),
            ("a:b:c", ImageError::Path),
            ("-nginx", ImageError::Path),
            ("nginx-", ImageError::Path),
            ("a//b", ImageError::Path),
            ("a/b/", ImageError::Path),
            ("a..b", ImageError::Path),
            ("a___b", ImageError::Path),
            ("a b", ImageError::Path),
            ("nginx@sha256:abc", ImageError::Digest),
            ("host:port/a", ImageError::Registry),
        ] {
            assert_eq!(check(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            check(&format!("a:{}", "t".repeat(129))),
            Err(ImageError::Tag)
        );
    }

    // The cases where the CLI's grammar and the manager's disagreed; each now follows Docker.

    #[test]
    fn upper_case_registries_are_domains() {
        // Docker reads an upper-case first component as a registry; the CLI refused it.
        assert_eq!(check("Registry.Example.com/team/app"), Ok(()));
        assert_eq!(check("Registry/app"), Ok(()));
    }

    #[test]
    fn ipv6_registries_are_accepted() {
        // `[addr]:port` is a domain in Docker's grammar; the CLI refused it.
        assert_eq!(check("[::1]:5000/app:1"), Ok(()));
        assert_eq!(check("[fe80::1]/app"), Ok(()));
        assert_eq!(check("[::1/app"), Err(ImageError::Registry));
        assert_eq!(check("[zz]/app"), Err(ImageError::Registry));
    }

    #[test]
    fn registry_hosts_are_dns_components() {
        // The CLI accepted empty components and ones starting or ending with '-'.
        for bad in ["a..b/c", "-a.b/c", "a-.b/c", ".a/c", "a.b:/c"] {
            assert_eq!(check(bad), Err(ImageError::Registry), "{bad}");
        }
    }

    #[test]
    fn digests_follow_docker() {
        // sha256 is exactly 64 lower-case hex digits (the CLI took upper case and any
        // length of at least 32); algorithm components start with a letter (the CLI took
        // digits first and empty components).
        assert_eq!(
            check(&format!("x@sha256:{}", SHA.to_uppercase())),
            Err(ImageError::Digest)
        );
        assert_eq!(
            check(&format!("x@sha256:{}", &SHA[..32])),
            Err(ImageError::Digest)
        );
        assert_eq!(check(&format!("x@1sha:{SHA}")), Err(ImageError::Digest));
        assert_eq!(check(&format!("x@sha256+:{SHA}")), Err(ImageError::Digest));
        assert_eq!(check(&format!("x@sha512:{SHA}{SHA}")), Ok(()));
        assert_eq!(check(&format!("x@Multi+Part.v1:{SHA}")), Ok(()));
    }

    #[test]
    fn lengths_follow_docker_within_the_bound() {
        // A name of 255 bytes with a 128-byte tag and a sha384 digest is a valid reference
        // (the CLI stopped at 463 bytes in all); names over 255 bytes are not.
        let name = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        assert_eq!(name.len(), 255);
        let full = format!("{name}:{}@sha384:{SHA}{}", "t".repeat(128), &SHA[..32]);
        assert!(full.len() > 463 && full.len() <= MAX_IMAGE_BYTES);
        assert_eq!(check(&full), Ok(()));
        assert_eq!(check(&format!("{name}b")), Err(ImageError::NameTooLong));
        assert_eq!(
            check(&"a".repeat(MAX_IMAGE_BYTES + 1)),
            Err(ImageError::TooLong)
        );
    }
}
