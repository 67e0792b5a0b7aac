//! W3C Trace Context: the `traceparent` a record's submission arrived with (or the gateway
//! started), carried through ingress onto its ledger or rejected message so one trace can follow
//! it from producer to read model.

/// A version-00 `traceparent`: `00-<trace id, 32 hex>-<parent id, 16 hex>-<flags, 2 hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` for anything the spec says to ignore (other versions'
    /// layouts, upper-case hex, all-zero ids).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let lower_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(trace, 32) && lower_hex(parent, 16) && lower_hex(flags, 2)) {
            return None;
        }
        let mut t = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        hex::decode_to_slice(trace, &mut t.trace_id).ok()?;
        hex::decode_to_slice(parent, &mut t.parent_id).ok()?;
        let mut f = [0u8; 1];
        hex::decode_to_slice(flags, &mut f).ok()?;
        t.flags = f[0];
        (t.trace_id != [0; 16] && t.parent_id != [0; 8]).then_some(t)
    }

    /// A new sampled trace from 24 random bytes (the caller's CSPRNG: this crate does no I/O).
    pub fn start(random: [u8; 24]) -> Self {
        let mut t = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0x01,
        };
        t.trace_id.copy_from_slice(&random[..16]);
        t.parent_id.copy_from_slice(&random[16..]);
        // An all-zero id is invalid; 2^-64 odds, but never emit one.
        t.trace_id[15] |= u8::from(t.trace_id == [0; 16]);
        t.parent_id[7] |= u8::from(t.parent_id == [0; 8]);
        t
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_w3c_example_and_refuses_what_the_spec_ignores() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(v).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(t.header(), v);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        let started = TraceParent::start([0; 24]);
        assert!(TraceParent::parse(&started.header()).is_some());
    }
}
