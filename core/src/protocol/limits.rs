//! The limits of a group, validated once (STYLE principle 7: a limit on everything).

/// Limits that size the shared state table and bound every queue of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages a sender may have outstanding in one shard (sent, not yet delivered by every
    /// member). A full window makes `send` wait. Default 4096: with 3 members sharing 2 cores, a
    /// window of 256 held 100-byte throughput to a fifth of what 4096 reaches (the ring bounds the
    /// bytes in flight anyway).
    pub window_len: u32,
    /// Largest payload of a message carried in the SST, in bytes. Default 10240.
    pub payload_len_max: u32,
    /// Bytes of each sender's message ring in each shard, at least twice the largest record
    /// (`2 * (32 + payload_len_max)`), a multiple of 64. Default 1 MiB.
    pub ring_len: u32,
    /// Members of a view. Default 64.
    pub members_max: u32,
    /// Shards a member may belong to. Default 64.
    pub shards_max: u32,
    /// Membership changes (removals and joins) one view change may carry; more wait for the
    /// next one. Default 16.
    pub changes_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window_len: 4096,
            payload_len_max: 10 << 10,
            ring_len: 1 << 20,
            members_max: 64,
            shards_max: 64,
            changes_max: 16,
        }
    }
}

/// A limit out of range; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid limit {field}: {reason}")]
pub struct LimitError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl Limits {
    /// Checks every limit.
    ///
    /// # Errors
    ///
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), LimitError> {
        let bad = |field, reason: &str| Err(LimitError { field, reason: reason.to_string() });
        if !(1..=1 << 16).contains(&self.window_len) {
            return bad("window_len", "must be between 1 and 65536");
        }
        if self.payload_len_max == 0 || self.payload_len_max > 1 << 24 {
            return bad("payload_len_max", "must be between 1 and 16777216");
        }
        let record_max = 32 + (self.payload_len_max as u64).next_multiple_of(16);
        if !u64::from(self.ring_len).is_multiple_of(64) || u64::from(self.ring_len) < 2 * record_max {
            return Err(LimitError {
                field: "ring_len",
                reason: format!("must be a multiple of 64 and at least {} (twice the largest record)", 2 * record_max),
            });
        }
        if !(1..=1024).contains(&self.members_max) {
            return bad("members_max", "must be between 1 and 1024");
        }
        if !(1..=4096).contains(&self.shards_max) {
            return bad("shards_max", "must be between 1 and 4096");
        }
        if !(1..=1024).contains(&self.changes_max) {
            return bad("changes_max", "must be between 1 and 1024");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        Limits::default().validate().unwrap();
        let e = Limits { window_len: 0, ..Limits::default() }.validate().unwrap_err();
        assert_eq!(e.field, "window_len");
        let e = Limits { payload_len_max: 0, ..Limits::default() }.validate().unwrap_err();
        assert_eq!(e.field, "payload_len_max");
        assert!(e.to_string().contains("payload_len_max"));
    }
}
