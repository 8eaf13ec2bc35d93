//! Each test tries to break one property of the backup format; the names say which.

use super::key::{DEFAULT_ITERATIONS, KEY_TEXT_PREFIX, MAX_ITERATIONS, MIN_ITERATIONS};
use super::*;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::secret::SecretString;
use crate::store::model::Cluster;

const PASSPHRASE: &str = "correct horse battery staple";
const CA_KEY: &str = "-----BEGIN PRIVATE KEY----- the CA key of the test swarm";

fn event(i: usize) -> AuditEvent {
    AuditEvent::now(Actor::system(), "test.event", &format!("t{i}"), Outcome::Ok)
}

/// A swarm state signed by `audit`: a cluster, a few audit records, a checkpoint, and one
/// record after it.
fn state_of(audit: &AuditKey) -> State {
    let mut s = State {
        cluster: Some(Cluster {
            id: "cluster-1".into(),
            created_at: crate::util::now_rfc3339(),
            ca_cert_pem: "cert".into(),
            ca_key_pem: SecretString::new(CA_KEY),
            worker_token: SecretString::new("SWMTKN-worker"),
            manager_token: SecretString::new("SWMTKN-manager"),
            cert_expiry_secs: 3600,
            autolock: false,
            unlock_key: None,
            heartbeat_period_ms: 0,
            ca_rotation: None,
            audit_key: Some(audit.clone()),
            audit_retention: 0,
            secret_history: 0,
            trust_domain: String::new(),
            workload: None,
            svid_ttl_secs: 0,
            oidc_issuer: String::new(),
        }),
        ..State::default()
    };
    for i in 0..4 {
        s.audit.append(event(i));
    }
    let cp = Checkpoint::sign(audit, "node-1", crate::util::now_rfc3339(), &s.audit).unwrap();
    s.audit.append(cp.to_event());
    s.audit.append(event(9));
    s
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
}

fn header_of(state: &State) -> BackupHeader {
    BackupHeader::for_state(
        state,
        Some(log_id(3, 42)),
        "node-1",
        crate::util::now_rfc3339(),
    )
    .unwrap()
}

/// A genuine backup made with a generated key.
struct Fixture {
    audit: AuditKey,
    state: State,
    key: BackupKey,
    text: SecretString,
    file: Vec<u8>,
}

fn fixture() -> Fixture {
    let audit = AuditKey::generate().unwrap();
    let state = state_of(&audit);
    let (key, text) = BackupKey::generate().unwrap();
    let file = seal(
        &encode_state(&state).unwrap(),
        header_of(&state),
        &key,
        &audit,
    )
    .unwrap();
    Fixture {
        audit,
        state,
        key,
        text,
        file,
    }
}

/// A file's parts, as an attacker who rewrites it sees them.
struct Parts {
    header: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

fn parts(file: &[u8]) -> Parts {
    let l = layout(file).unwrap();
    Parts {
        header: l.header.to_vec(),
        nonce: l.nonce.to_vec(),
        ciphertext: l.ciphertext.to_vec(),
    }
}

/// Lays out and signs a file from parts: every length consistent, the signature valid for
/// `signer`. Only the AEAD (and check_state) can then tell what was changed.
fn rebuild(p: &Parts, signer: &AuditKey) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&(p.header.len() as u32).to_be_bytes());
    f.extend_from_slice(&p.header);
    f.extend_from_slice(&(p.ciphertext.len() as u64).to_be_bytes());
    f.extend_from_slice(&p.nonce);
    f.extend_from_slice(&p.ciphertext);
    let sig = signer.sign_backup(&f).unwrap();
    f.extend_from_slice(&sig);
    f
}

/// The file with its header JSON edited by `change`, re-signed by `signer`.
fn with_header(
    file: &[u8],
    signer: &AuditKey,
    change: impl FnOnce(&mut serde_json::Value),
) -> Vec<u8> {
    let mut p = parts(file);
    let mut h: serde_json::Value = serde_json::from_slice(&p.header).unwrap();
    change(&mut h);
    p.header = serde_json::to_vec(&h).unwrap();
    rebuild(&p, signer)
}

fn encoded(state: &State) -> Vec<u8> {
    encode_state(state).unwrap().to_vec()
}

#[test]
fn a_backup_round_trips_with_a_generated_key() {
    let f = fixture();
    let h = read_header(&f.file).unwrap();
    assert_eq!(h.format, FORMAT);
    assert_eq!(h.cluster_id, "cluster-1");
    assert_eq!((h.log_term, h.log_index), (3, 42));
    let head = f.state.audit.head().unwrap();
    assert_eq!(
        (h.audit_seq, h.audit_hash.as_str()),
        (6, head.hash.as_str())
    );
    assert_eq!(h.checkpoint_seq, Some(5));
    assert_eq!(h.node_id, "node-1");
    assert_eq!(h.skep_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(h.key, KeySpec::Generated);
    assert_eq!(h.public_key, f.audit.public_key());

    let key = key_for(&h, f.text.expose()).unwrap();
    let opened = open(&f.file, &key).unwrap();
    assert_eq!(opened.header(), &h);
    assert_eq!(opened.state_bytes(), encoded(&f.state).as_slice());
    let state = opened.state().unwrap();
    assert_eq!(encoded(&state), encoded(&f.state));
    // The same key object opens it too.
    assert!(open(&f.file, &f.key).is_ok());
}

#[test]
fn backup_state_makes_a_file_that_restores_to_the_same_state() {
    let audit = AuditKey::generate().unwrap();
    let state = state_of(&audit);
    let (key, text) = BackupKey::generate().unwrap();
    let file = backup_state(
        &state,
        Some(log_id(7, 99)),
        "node-9",
        crate::util::now_rfc3339(),
        &key,
    )
    .unwrap();
    let h = read_header(&file).unwrap();
    assert_eq!(
        (h.log_term, h.log_index, h.node_id.as_str()),
        (7, 99, "node-9")
    );
    assert_eq!(h.public_key, audit.public_key());
    let restored = open(&file, &key_for(&h, text.expose()).unwrap())
        .unwrap()
        .state()
        .unwrap();
    assert_eq!(encoded(&restored), encoded(&state));
}

#[test]
fn a_backup_round_trips_with_a_passphrase_at_the_default_cost() {
    let audit = AuditKey::generate().unwrap();
    let state = state_of(&audit);
    let key = BackupKey::from_passphrase(PASSPHRASE).unwrap();
    let file = seal(&encoded(&state), header_of(&state), &key, &audit).unwrap();
    let h = read_header(&file).unwrap();
    let KeySpec::Passphrase {
        kdf,
        iterations,
        salt,
    } = &h.key
    else {
        panic!("{:?}", h.key);
    };
    assert_eq!(
        (kdf.as_str(), *iterations, salt.len()),
        ("pbkdf2-hmac-sha256", DEFAULT_ITERATIONS, 32)
    );
    let again = key_for(&h, PASSPHRASE).unwrap();
    let state2 = open(&file, &again).unwrap().state().unwrap();
    assert_eq!(encoded(&state2), encoded(&state));
}

#[test]
fn every_single_byte_flip_is_refused_naming_the_problem() {
    let f = fixture();
    let l = layout(&f.file).unwrap();
    let header_end = PREFIX_LEN as usize + l.header.len();
    let nonce_start = l.aad.len();
    for i in 0..f.file.len() {
        let mut bad = f.file.clone();
        bad[i] ^= 0x01;
        let got = open(&bad, &f.key);
        let e = match got {
            Ok(_) => panic!("a flip at byte {i} opened"),
            Err(e) => e,
        };
        let fits = if i < MAGIC.len() {
            matches!(
                e,
                BackupError::NotABackup | BackupError::UnsupportedFormat { .. }
            )
        } else if i < PREFIX_LEN as usize {
            matches!(
                e,
                BackupError::HeaderTooLarge { .. }
                    | BackupError::TruncatedHeader { .. }
                    | BackupError::Truncated { .. }
                    | BackupError::TrailingBytes { .. }
                    | BackupError::BadStateLength { .. }
                    | BackupError::Header(_)
            )
        } else if i < header_end {
            matches!(
                e,
                BackupError::Header(_)
                    | BackupError::UnsupportedFormat { .. }
                    | BackupError::Kdf(_)
                    | BackupError::BadSignature
            )
        } else if i < nonce_start {
            matches!(
                e,
                BackupError::Truncated { .. }
                    | BackupError::TrailingBytes { .. }
                    | BackupError::BadStateLength { .. }
            )
        } else {
            // Nonce, ciphertext, tag, signature: the lengths hold, only the signature can
            // tell, and it does before any decryption is tried.
            matches!(e, BackupError::BadSignature)
        };
        assert!(fits, "a flip at byte {i} gave {e:?}");
        assert!(read_header(&bad).is_err(), "byte {i}");
    }
}

#[test]
fn a_file_altered_and_re_signed_by_the_audit_key_still_does_not_decrypt() {
    // Whoever holds the audit key but not the backup key can re-sign anything; the AEAD,
    // whose associated data is the header, still refuses every change.
    let f = fixture();
    let mut p = parts(&f.file);
    p.ciphertext[3] ^= 1;
    let e = open(&rebuild(&p, &f.audit), &f.key).unwrap_err();
    assert!(matches!(e, BackupError::Decrypt), "{e:?}");

    let mut p = parts(&f.file);
    p.nonce[0] ^= 1;
    let e = open(&rebuild(&p, &f.audit), &f.key).unwrap_err();
    assert!(matches!(e, BackupError::Decrypt), "{e:?}");

    for (field, value) in [
        ("node_id", serde_json::json!("node-2")),
        ("log_index", serde_json::json!(43)),
        ("created_at", serde_json::json!("2020-01-01T00:00:00Z")),
    ] {
        let bad = with_header(&f.file, &f.audit, |h| h[field] = value);
        assert_ne!(read_header(&bad).unwrap(), read_header(&f.file).unwrap());
        let e = open(&bad, &f.key).unwrap_err();
        assert!(matches!(e, BackupError::Decrypt), "{field}: {e:?}");
    }
    // Unchanged but re-signed: it opens (the rebuild itself is faithful).
    assert!(open(&rebuild(&parts(&f.file), &f.audit), &f.key).is_ok());
}

#[test]
fn every_truncation_is_refused_with_the_sizes() {
    let f = fixture();
    let full = f.file.len() as u64;
    let aad_end = layout(&f.file).unwrap().aad.len();
    for len in 0..f.file.len() {
        let e = open(&f.file[..len], &f.key).unwrap_err();
        let actual = len as u64;
        if len >= aad_end {
            assert!(
                matches!(e, BackupError::Truncated { expected, actual: a } if expected == full && a == actual),
                "{len}: {e:?}"
            );
            assert!(
                e.to_string().contains(&format!(
                    "truncated: it should be {full} bytes, it is {actual}"
                )),
                "{e}"
            );
        } else {
            assert!(
                matches!(e, BackupError::TruncatedHeader { actual: a, at_least } if a == actual && at_least > actual && at_least <= full),
                "{len}: {e:?}"
            );
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        assert!(read_header(&f.file[..len]).is_err());
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let f = fixture();
    let full = f.file.len() as u64;
    for extra in [vec![0u8], vec![0u8; 64], f.file.clone()] {
        let mut long = f.file.clone();
        long.extend_from_slice(&extra);
        let e = open(&long, &f.key).unwrap_err();
        assert!(
            matches!(e, BackupError::TrailingBytes { expected, actual } if expected == full && actual == long.len() as u64),
            "{e:?}"
        );
        assert!(read_header(&long).is_err());
    }
}

#[test]
fn a_wrong_key_is_refused() {
    let f = fixture();
    let (other, other_text) = BackupKey::generate().unwrap();
    assert!(matches!(open(&f.file, &other), Err(BackupError::Decrypt)));
    let h = read_header(&f.file).unwrap();
    let wrong = key_for(&h, other_text.expose()).unwrap();
    assert!(matches!(open(&f.file, &wrong), Err(BackupError::Decrypt)));
    // A passphrase key for a generated-key file: named, not tried.
    let pass = BackupKey::from_passphrase_with_iterations(PASSPHRASE, MIN_ITERATIONS).unwrap();
    assert!(matches!(
        open(&f.file, &pass),
        Err(BackupError::WrongKeyKind {
            needed: "generated",
            given: "passphrase"
        })
    ));
    // A passphrase typed where the generated key is needed.
    let e = key_for(&h, PASSPHRASE).unwrap_err();
    assert!(
        matches!(&e, BackupError::KeyText(why) if why.contains("generated key")),
        "{e:?}"
    );
}

#[test]
fn a_wrong_passphrase_is_refused() {
    let audit = AuditKey::generate().unwrap();
    let state = state_of(&audit);
    let key = BackupKey::from_passphrase_with_iterations(PASSPHRASE, MIN_ITERATIONS).unwrap();
    let file = seal(&encoded(&state), header_of(&state), &key, &audit).unwrap();
    let h = read_header(&file).unwrap();
    assert!(open(&file, &key_for(&h, PASSPHRASE).unwrap()).is_ok());
    let wrong = key_for(&h, "correct horse battery stapler").unwrap();
    assert!(matches!(open(&file, &wrong), Err(BackupError::Decrypt)));
    // The right passphrase derived for another file (another salt): named, not tried.
    let elsewhere = BackupKey::from_passphrase_with_iterations(PASSPHRASE, MIN_ITERATIONS).unwrap();
    assert!(matches!(
        open(&file, &elsewhere),
        Err(BackupError::KeyForAnotherBackup)
    ));
    // A generated key for a passphrase file.
    let (generated, _) = BackupKey::generate().unwrap();
    assert!(matches!(
        open(&file, &generated),
        Err(BackupError::WrongKeyKind {
            needed: "passphrase",
            given: "generated"
        })
    ));
}

#[test]
fn a_backup_re_encrypted_and_re_signed_by_another_audit_key_is_refused_by_check_state() {
    // A thief with the backup key (not the audit key) decrypts a genuine backup and
    // re-seals its state, signed by a key of its own: the signature verifies against the
    // key the header names, but the state names the swarm's real audit key.
    let f = fixture();
    let thief = AuditKey::generate().unwrap();
    let plain = open(&f.file, &f.key).unwrap();
    let forged = seal(plain.state_bytes(), plain.header().clone(), &f.key, &thief).unwrap();
    let opened = open(&forged, &f.key).unwrap();
    assert_eq!(opened.header().public_key, thief.public_key());
    let e = opened.state().unwrap_err();
    assert!(
        matches!(&e, BackupError::StateMismatch(why) if why.contains(f.audit.public_key())),
        "{e:?}"
    );
    assert!(e.to_string().contains("do not restore it"), "{e}");
}

#[test]
fn check_state_refuses_a_header_that_does_not_describe_the_state() {
    let f = fixture();
    let h = read_header(&f.file).unwrap();
    assert!(check_state(&h, &f.state).is_ok());
    type Change = Box<dyn Fn(&mut BackupHeader, &mut State)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "cluster",
            Box::new(|h, _| h.cluster_id = "cluster-2".into()),
        ),
        ("audit head", Box::new(|h, _| h.audit_seq += 1)),
        (
            "audit hash",
            Box::new(|h, _| h.audit_hash = crate::audit::GENESIS_HASH.into()),
        ),
        ("checkpoint", Box::new(|h, _| h.checkpoint_seq = None)),
        ("no cluster", Box::new(|_, s| s.cluster = None)),
        (
            "no audit key",
            Box::new(|_, s| {
                if let Some(c) = s.cluster.as_mut() {
                    c.audit_key = None;
                }
            }),
        ),
        (
            "newer chain",
            Box::new(|_, s| {
                s.audit.append(event(10));
            }),
        ),
    ];
    for (what, change) in cases {
        let (mut h2, mut s2) = (h.clone(), f.state.clone());
        change(&mut h2, &mut s2);
        assert!(
            matches!(check_state(&h2, &s2), Err(BackupError::StateMismatch(_))),
            "{what}"
        );
    }
}

#[test]
fn oversized_declared_lengths_are_refused_before_allocating() {
    let key = BackupKey::fixed_for_fuzz();
    let file = |header_len: u32, header: &[u8], ct_len: Option<u64>| {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&header_len.to_be_bytes());
        f.extend_from_slice(header);
        if let Some(c) = ct_len {
            f.extend_from_slice(&c.to_be_bytes());
        }
        f
    };
    // A few bytes that declare gigabytes: refused on the declaration alone.
    for declared in [u32::MAX, MAX_HEADER as u32 + 1] {
        let e = open(&file(declared, b"", None), &key).unwrap_err();
        assert!(
            matches!(e, BackupError::HeaderTooLarge { declared: d } if d == u64::from(declared)),
            "{e:?}"
        );
    }
    for declared in [u64::MAX, MAX_STATE + TAG_LEN + 1, 0, TAG_LEN - 1] {
        let e = open(&file(2, b"{}", Some(declared)), &key).unwrap_err();
        assert!(
            matches!(e, BackupError::BadStateLength { declared: d } if d == declared),
            "{e:?}"
        );
    }
    // The largest allowed declaration on a short file: truncated, by the declared size.
    let e = open(&file(2, b"{}", Some(MAX_STATE + TAG_LEN)), &key).unwrap_err();
    assert!(
        matches!(e, BackupError::Truncated { expected, .. } if expected == PREFIX_LEN + 2 + 8 + NONCE_LEN + MAX_STATE + TAG_LEN + SIG_LEN),
        "{e:?}"
    );
    // Encoding stops as soon as the bound is passed, not after building the whole text.
    let f = fixture();
    let whole = encoded(&f.state).len() as u64;
    assert!(matches!(
        encode_bounded(&f.state, 100),
        Err(BackupError::StateTooLarge { size }) if size > 100 && size < whole
    ));
    assert_eq!(encode_bounded(&f.state, whole).unwrap().len() as u64, whole);
    // Making one: a state over the bound is refused, as is decoding one.
    let big = vec![b' '; MAX_STATE as usize + 1];
    assert!(matches!(
        decode_state(&big),
        Err(BackupError::StateTooLarge { .. })
    ));
    let h = read_header(&f.file).unwrap();
    assert!(matches!(
        seal(&big, h, &f.key, &f.audit),
        Err(BackupError::StateTooLarge { .. })
    ));
}

#[test]
fn hostile_key_derivations_are_refused() {
    let f = fixture();
    let pass = BackupKey::from_passphrase_with_iterations(PASSPHRASE, MIN_ITERATIONS).unwrap();
    let file = seal(&encoded(&f.state), header_of(&f.state), &pass, &f.audit).unwrap();
    for iterations in [0, 1, MIN_ITERATIONS - 1, MAX_ITERATIONS + 1, u32::MAX] {
        // Not even a caller can ask for them.
        assert!(
            matches!(
                BackupKey::from_passphrase_with_iterations(PASSPHRASE, iterations),
                Err(BackupError::Kdf(_))
            ),
            "{iterations}"
        );
        // A file naming them, validly signed (by whoever holds the audit key), is refused
        // before any derivation.
        let bad = with_header(&file, &f.audit, |h| {
            h["key"]["iterations"] = serde_json::json!(iterations)
        });
        assert!(
            matches!(read_header(&bad), Err(BackupError::Kdf(_))),
            "{iterations}"
        );
        assert!(matches!(open(&bad, &pass), Err(BackupError::Kdf(_))));
        // And a header built by hand never reaches PBKDF2 either.
        let mut h = read_header(&file).unwrap();
        if let KeySpec::Passphrase { iterations: n, .. } = &mut h.key {
            *n = iterations;
        }
        assert!(matches!(key_for(&h, PASSPHRASE), Err(BackupError::Kdf(_))));
    }
    // The bounds themselves are accepted.
    for iterations in [MIN_ITERATIONS, MAX_ITERATIONS] {
        let spec = KeySpec::Passphrase {
            kdf: key::KDF_PBKDF2_SHA256.into(),
            iterations,
            salt: "00".repeat(key::SALT_LEN),
        };
        assert!(spec.check().is_ok(), "{iterations}");
    }
    // Another KDF, or a salt of another length.
    for (field, value) in [
        ("kdf", serde_json::json!("md5")),
        ("salt", serde_json::json!("00")),
        ("salt", serde_json::json!("zz".repeat(16))),
    ] {
        let bad = with_header(&file, &f.audit, |h| h["key"][field] = value);
        assert!(
            matches!(read_header(&bad), Err(BackupError::Kdf(_))),
            "{field}"
        );
    }
}

#[test]
fn a_typo_in_the_key_text_is_caught() {
    let f = fixture();
    let text = f.text.expose();
    assert!(text.starts_with(KEY_TEXT_PREFIX));
    assert_eq!(text.len(), KEY_TEXT_PREFIX.len() + 58);
    let body_start = KEY_TEXT_PREFIX.len();
    let alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    for i in body_start..text.len() {
        for c in alphabet
            .chars()
            .filter(|&c| c != char::from(text.as_bytes()[i]))
        {
            let mut typo = text.to_string();
            typo.replace_range(i..=i, &c.to_string());
            let e = BackupKey::parse_text(&typo).unwrap_err();
            assert!(
                matches!(e, BackupError::KeyChecksum | BackupError::KeyText(_)),
                "{i}: {e:?}"
            );
            assert!(!e.to_string().contains(&typo[body_start..]), "{e}");
        }
    }
    // Two neighbours swapped.
    let b = text.as_bytes();
    if let Some(i) = (body_start..text.len() - 1).find(|&i| b[i] != b[i + 1]) {
        let mut swapped = b.to_vec();
        swapped.swap(i, i + 1);
        let swapped = String::from_utf8(swapped).unwrap();
        assert!(BackupKey::parse_text(&swapped).is_err());
    }
    // A character missing, one too many, another prefix, a non-base32 character.
    for bad in [
        text[..text.len() - 1].to_string(),
        format!("{text}0"),
        text.replacen("SKEPBKP", "SKEPBKQ", 1),
        format!("{}U", &text[..text.len() - 1]),
        String::new(),
    ] {
        assert!(
            matches!(BackupKey::parse_text(&bad), Err(BackupError::KeyText(_))),
            "{bad}"
        );
    }
    // What a careful copy may change is still the same key: case, white space, and the
    // letters Crockford's base32 reads as digits.
    for fine in [
        text.to_lowercase(),
        format!("  {text}\n"),
        format!(
            "{KEY_TEXT_PREFIX}{}",
            text[body_start..].replace('0', "O").replace('1', "l")
        ),
    ] {
        let k = BackupKey::parse_text(&fine).unwrap();
        assert!(open(&f.file, &k).is_ok(), "{fine}");
    }
}

#[test]
fn passphrase_length_is_bounded() {
    for p in ["a".repeat(15), "a".repeat(1025), String::new()] {
        assert!(matches!(
            BackupKey::from_passphrase_with_iterations(&p, MIN_ITERATIONS),
            Err(BackupError::PassphraseLength { len }) if len == p.len()
        ));
    }
    assert!(BackupKey::from_passphrase_with_iterations(&"a".repeat(16), MIN_ITERATIONS).is_ok());
    assert!(BackupKey::from_passphrase_with_iterations(&"a".repeat(1024), MIN_ITERATIONS).is_ok());
}

#[test]
fn debug_and_errors_show_no_key_material() {
    let f = fixture();
    let text = f.text.expose();
    let shown = format!("{:?}", f.key);
    assert_eq!(shown, "BackupKey(generated, ..)");
    assert!(!format!("{:?}", f.text).contains(&text[KEY_TEXT_PREFIX.len()..]));
    let raw = hex::encode(f.key.expose());
    assert!(!shown.contains(&raw[..8]));
    let pass = BackupKey::from_passphrase_with_iterations(PASSPHRASE, MIN_ITERATIONS).unwrap();
    let shown = format!("{pass:?}");
    assert_eq!(shown, "BackupKey(passphrase, ..)");
    // An opened backup shows its header, never the state (which holds the CA key).
    let opened = open(&f.file, &f.key).unwrap();
    let shown = format!("{opened:?}");
    assert!(
        shown.contains("cluster-1") && !shown.contains("CA key"),
        "{shown}"
    );
    // A state that does not decode is described by position, not by its text.
    let e = decode_state(br#"{"cluster": "hunter2 the secret"}"#).unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    // Every error a wrong key can cause names no key.
    for e in [
        open(&f.file, &pass).unwrap_err(),
        key_for(
            &read_header(&f.file).unwrap(),
            &text.to_lowercase().replace('s', "t"),
        )
        .unwrap_err(),
    ] {
        let s = format!("{e} {e:?}");
        assert!(!s.contains(&text[KEY_TEXT_PREFIX.len()..]) && !s.contains(PASSPHRASE));
    }
}

#[test]
fn other_formats_and_invalid_headers_are_named() {
    let f = fixture();
    let mut newer = f.file.clone();
    newer[7] = b'2';
    assert!(matches!(
        read_header(&newer),
        Err(BackupError::UnsupportedFormat { .. })
    ));
    assert!(matches!(
        read_header(b"PK\x03\x04 a zip file"),
        Err(BackupError::NotABackup)
    ));
    let v2 = with_header(&f.file, &f.audit, |h| {
        h["format"] = serde_json::json!(2);
        h["something_new"] = serde_json::json!(true);
    });
    let e = read_header(&v2).unwrap_err();
    assert!(
        matches!(&e, BackupError::UnsupportedFormat { found } if found == "2"),
        "{e:?}"
    );
    // Fields a restore shows on a terminal: no control characters; and well-formed values.
    for (field, value) in [
        ("node_id", serde_json::json!("node\u{1b}[2J")),
        ("cluster_id", serde_json::json!("")),
        ("skep_version", serde_json::json!("v".repeat(MAX_FIELD + 1))),
        ("created_at", serde_json::json!("yesterday")),
        ("public_key", serde_json::json!("AB".repeat(32))),
        ("audit_hash", serde_json::json!("00")),
        ("checkpoint_seq", serde_json::json!(7)),
        ("unknown", serde_json::json!(1)),
    ] {
        let bad = with_header(&f.file, &f.audit, |h| h[field] = value);
        let e = read_header(&bad).unwrap_err();
        assert!(matches!(e, BackupError::Header(_)), "{field}: {e:?}");
    }
    // And seal refuses to write what read_header would refuse.
    let mut h = read_header(&f.file).unwrap();
    h.node_id = "node\u{7}".into();
    assert!(matches!(
        seal(b"{}", h, &f.key, &f.audit),
        Err(BackupError::Header(_))
    ));
}

#[test]
fn a_swarm_without_a_cluster_or_audit_key_is_not_backed_up() {
    let e = BackupHeader::for_state(&State::default(), None, "n", crate::util::now_rfc3339());
    assert!(matches!(e, Err(BackupError::NoCluster)));
    let mut s = state_of(&AuditKey::generate().unwrap());
    if let Some(c) = s.cluster.as_mut() {
        c.audit_key = None;
    }
    let e = BackupHeader::for_state(&s, None, "n", crate::util::now_rfc3339());
    assert!(matches!(e, Err(BackupError::NoAuditKey)));
}

#[test]
fn an_empty_chain_is_described_by_the_genesis_hash() {
    let audit = AuditKey::generate().unwrap();
    let mut s = state_of(&audit);
    s.audit = crate::audit::AuditChain::default();
    let h = BackupHeader::for_state(&s, None, "n", crate::util::now_rfc3339()).unwrap();
    assert_eq!((h.audit_seq, h.audit_hash.as_str()), (0, GENESIS_HASH));
    assert_eq!((h.log_term, h.log_index, h.checkpoint_seq), (0, 0, None));
    let key = BackupKey::fixed_for_fuzz();
    let file = seal(&encoded(&s), h, &key, &audit).unwrap();
    assert!(open(&file, &key).unwrap().state().is_ok());
}

#[test]
fn open_untrusted_never_panics_on_junk() {
    for len in 0..300usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        assert!(!open_untrusted(&junk));
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&junk);
        assert!(!open_untrusted(&framed));
    }
    let f = fixture();
    let key = BackupKey::fixed_for_fuzz();
    let file = seal(&encoded(&f.state), header_of(&f.state), &key, &f.audit).unwrap();
    assert!(open_untrusted(&file));
}
