//! RFC 8785 (JCS) known-answer vectors run against ATP's canonicalizer.
//!
//! The data lives in `tests/vectors/rfc8785/` at the workspace root; `PROVENANCE.md` there says
//! where every file came from. Each test asserts a minimum number of vectors checked so that a
//! missing or emptied directory fails instead of passing vacuously, and every vector the
//! canonicalizer refuses on purpose is named below with its reason and asserted to be refused —
//! nothing is skipped silently.

use std::fs;
use std::path::{Path, PathBuf};

use atp_core::canonical::{CanonicalError, parse_strict, to_canonical};
use serde_json::{Number, Value};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/rfc8785");

/// Upstream `testdata/input/*.json` files that `parse_strict` refuses on purpose, with the reason.
/// Empty today: all six cyberphone documents are I-JSON. A name listed here must exist.
const REFUSED_DOCUMENTS: &[(&str, &str)] = &[];

/// Number vectors (file, IEEE 754 hex) whose expected ES6 text `parse_strict` refuses when it is
/// read back as input. ES6 prints these doubles as plain integer literals of magnitude ≥ 2^53,
/// which fit a u64/i64 and so reach the I-JSON integer bound (±(2^53-1)): the canonical text is
/// right, but ATP will not accept it as an exact integer on the way in.
const REFUSED_NUMBER_LITERALS: &[(&str, &str, &str)] = &[
    (
        "rfc8785-appendix-b.txt",
        "4340000000000000",
        "9007199254740992 = 2^53, beyond the I-JSON integer bound",
    ),
    (
        "rfc8785-appendix-b.txt",
        "c340000000000000",
        "-9007199254740992 = -2^53, beyond the I-JSON integer bound",
    ),
    (
        "es6testfile-sample.txt",
        "4340000000000001",
        "9007199254740994 = 2^53+2, beyond the I-JSON integer bound",
    ),
    (
        "es6testfile-sample.txt",
        "4340000000000002",
        "9007199254740996 = 2^53+4, beyond the I-JSON integer bound",
    ),
];

/// Minimum finite / non-finite rows per number file; the files hold exactly these many today.
const NUMBER_FILES: &[(&str, usize, usize)] = &[
    // RFC 8785 Appendix B, Table 1: 26 rows, NaN and Infinity among them.
    ("rfc8785-appendix-b.txt", 24, 2),
    // The sample lines of upstream testdata/README.md.
    ("es6testfile-sample.txt", 7, 0),
];

const MIN_DOCUMENTS: usize = 6;

fn vectors_dir() -> PathBuf {
    PathBuf::from(VECTORS)
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn canonical_of(input: &[u8], what: &str) -> Vec<u8> {
    let value = parse_strict(input).unwrap_or_else(|e| panic!("{what}: parse_strict: {e}"));
    to_canonical(&value).unwrap_or_else(|e| panic!("{what}: to_canonical: {e}"))
}

/// Decodes an upstream `outhex/*.txt` file: hex byte pairs separated by spaces and newlines.
fn decode_outhex(text: &[u8], what: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    hex::decode(digits).unwrap_or_else(|e| panic!("{what}: bad hex: {e}"))
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cyberphone_documents_canonicalize_to_the_expected_bytes() {
    let dir = vectors_dir();
    let mut inputs: Vec<PathBuf> = fs::read_dir(dir.join("input"))
        .unwrap_or_else(|e| panic!("list {}/input: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("list {}/input: {e}", dir.display()));
    inputs.retain(|p| p.extension().is_some_and(|x| x == "json"));
    inputs.sort();

    let (mut matched, mut matched_hex, mut refused) = (0, 0, 0);
    for input in &inputs {
        let stem = input
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_else(|| panic!("non UTF-8 file name {}", input.display()));
        let bytes = read(input);

        if let Some((_, reason)) = REFUSED_DOCUMENTS.iter().find(|(name, _)| *name == stem) {
            let err = parse_strict(&bytes).expect_err(stem);
            assert!(
                err.is_i_json_violation(),
                "{stem} should be refused as not I-JSON ({reason}), got {err:?}"
            );
            refused += 1;
            continue;
        }

        let got = canonical_of(&bytes, stem);
        let expected = read(&dir.join("output").join(format!("{stem}.json")));
        assert_eq!(
            got,
            expected,
            "{stem}: canonical bytes differ\n got: {}\nwant: {}",
            show(&got),
            show(&expected)
        );
        matched += 1;

        let outhex = dir.join("outhex").join(format!("{stem}.txt"));
        if outhex.exists() {
            let decoded = decode_outhex(&read(&outhex), stem);
            assert_eq!(decoded, expected, "{stem}: outhex and output disagree");
            assert_eq!(got, decoded, "{stem}: canonical bytes differ from outhex");
            matched_hex += 1;
        }
    }

    for (name, _) in REFUSED_DOCUMENTS {
        assert!(
            inputs
                .iter()
                .any(|p| p.file_stem().is_some_and(|s| s == *name)),
            "REFUSED_DOCUMENTS names {name}, which is not a vector"
        );
    }
    assert_eq!(refused, REFUSED_DOCUMENTS.len());
    assert!(
        matched + refused >= MIN_DOCUMENTS,
        "only {matched} + {refused} documents checked in {}",
        dir.display()
    );
    assert!(
        matched_hex >= MIN_DOCUMENTS,
        "only {matched_hex} outhex files checked"
    );
}

/// One `hex-ieee,expected` line, the upstream es6testfile format: 1–16 hex digits of the IEEE 754
/// bit pattern, then the ES6 `Number.prototype.toString` text (empty for NaN and Infinity, as in
/// the RFC's table, which JSON cannot carry).
fn parse_number_line(line: &str, what: &str) -> (u64, String) {
    let (bits, expected) = line
        .split_once(',')
        .unwrap_or_else(|| panic!("{what}: no comma in {line:?}"));
    let bits = u64::from_str_radix(bits, 16)
        .unwrap_or_else(|e| panic!("{what}: bad IEEE 754 hex {bits:?}: {e}"));
    (bits, expected.to_owned())
}

#[test]
fn number_vectors_serialize_as_es6_does() {
    let dir = vectors_dir().join("numbers");
    let mut refused_seen = 0;
    for (file, min_finite, non_finite_rows) in NUMBER_FILES {
        let text = String::from_utf8(read(&dir.join(file)))
            .unwrap_or_else(|e| panic!("{file} is not UTF-8: {e}"));
        let (mut finite, mut non_finite) = (0, 0);
        for line in text.lines() {
            let (bits, expected) = parse_number_line(line, file);
            let what = format!("{file} {bits:016x}");
            let double = f64::from_bits(bits);

            let Some(number) = Number::from_f64(double) else {
                // NaN and ±Infinity: JSON has no spelling for them, so serde_json cannot even
                // hold one in a Value, and RFC 8785 §3.2.2.3 requires an error. Counted below.
                assert!(!double.is_finite(), "{what}: finite but refused");
                assert_eq!(expected, "", "{what}: non-finite row expects text");
                non_finite += 1;
                continue;
            };

            // The double as a value, as a producer building JSON in code would have it.
            let built = Value::Array(vec![Value::Number(number)]);
            let got = to_canonical(&built).unwrap_or_else(|e| panic!("{what}: to_canonical: {e}"));
            assert_eq!(show(&got), format!("[{expected}]"), "{what}");

            // The expected text read back as input: ES6 output is the shortest literal that
            // round-trips, so it must come back unchanged — unless parse_strict refuses it.
            let literal = format!("[{expected}]");
            let listed = REFUSED_NUMBER_LITERALS
                .iter()
                .find(|(f, hex, _)| f == file && u64::from_str_radix(hex, 16) == Ok(bits));
            match listed {
                Some((_, _, reason)) => {
                    let err = parse_strict(literal.as_bytes()).expect_err(&what);
                    assert!(
                        matches!(err, CanonicalError::NotIJson(_)),
                        "{what}: {literal} should be refused ({reason}), got {err:?}"
                    );
                    refused_seen += 1;
                }
                None => {
                    let again = canonical_of(literal.as_bytes(), &what);
                    assert_eq!(show(&again), literal, "{what}: not a fixpoint");
                }
            }
            finite += 1;
        }
        assert!(
            finite >= *min_finite,
            "{file}: only {finite} finite vectors checked, want at least {min_finite}"
        );
        assert_eq!(
            non_finite, *non_finite_rows,
            "{file}: NaN/Infinity rows skipped"
        );
    }
    assert_eq!(
        refused_seen,
        REFUSED_NUMBER_LITERALS.len(),
        "every REFUSED_NUMBER_LITERALS entry must name a vector"
    );
}

#[test]
fn parse_strict_refuses_what_i_json_forbids() {
    let cases: &[(&str, &[u8], bool)] = &[
        // (what, input, refused as an I-JSON violation rather than as a syntax error)
        ("duplicate member name", br#"{"a":1,"a":2}"#, true),
        ("integer 2^53 + 1", b"9007199254740993", true),
        // serde_json refuses a lone surrogate escape while lexing, so it surfaces as a
        // syntax error; what matters is that it never reaches the canonicalizer.
        ("lone surrogate", br#""\ud800""#, false),
    ];
    for (what, input, i_json) in cases {
        let err = parse_strict(input).expect_err(what);
        if *i_json {
            assert!(err.is_i_json_violation(), "{what}: {err:?}");
        } else {
            assert!(matches!(err, CanonicalError::Syntax(_)), "{what}: {err:?}");
        }
    }
}
