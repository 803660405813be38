//! Why a member refused or failed a call: the kind carried by every error reply, to members and
//! to external clients alike.

/// Why a member answered a call with an error: the first byte of an error reply's body.
/// An unknown byte (from a newer member) reads as [`RemoteKind::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteKind {
    /// None of the kinds below.
    Other = 0,
    /// The type has no such method, or not of that kind (ordered or query): the members
    /// disagree on the type.
    NoSuchMethod = 1,
    /// The arguments did not validate as the method's arguments.
    BadArguments = 2,
    /// The handler's reply could not be archived.
    BadReply = 3,
    /// The member holds no replica of the shard (it left it, or its state has not arrived).
    NoReplica = 4,
    /// The shard is unordered: ordered calls are not applied there.
    Unordered = 5,
    /// A method marked synchronous answered asynchronously (a hand-written type that lies).
    NotSynchronous = 6,
    /// The member has too much work waiting; the call was not run. Trying again later may work.
    Overloaded = 7,
    /// The member has stopped or is not attached to a group.
    Stopped = 8,
    /// A stable query: the shard did not settle within the member's call timeout.
    NotSettled = 9,
    /// The call was applied, but its reply was lost in a view change and is no longer kept.
    ReplyLost = 10,
    /// An external client expects another type (or another version of it) than the one the
    /// member hosts in the subgroup: their method tables differ.
    TypeMismatch = 11,
    /// The call's message is larger than the group's `limits.payload_len_max`.
    TooLarge = 12,
    /// An external client sent an ordered call again, but the replicas no longer remember
    /// the client's calls (its record expired): whether the first one was applied is unknown.
    SessionExpired = 13,
    /// The member could not finish relaying the call (a view change lost it, the member is
    /// leaving): sending it again, to this member or another, is safe.
    TryAgain = 14,
    /// The call was applied, but not known persisted at every member of its shard in time (a
    /// member's disk is failing or slow). Sending it again returns the same reply once it is.
    NotPersisted = 15,
    /// The service's authorisation refused the caller ([`crate::tls`] identities; the text
    /// says why).
    Unauthorized = 16,
}

impl RemoteKind {
    /// The kind a byte stands for.
    pub fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::NoSuchMethod,
            2 => Self::BadArguments,
            3 => Self::BadReply,
            4 => Self::NoReplica,
            5 => Self::Unordered,
            6 => Self::NotSynchronous,
            7 => Self::Overloaded,
            8 => Self::Stopped,
            9 => Self::NotSettled,
            10 => Self::ReplyLost,
            11 => Self::TypeMismatch,
            12 => Self::TooLarge,
            13 => Self::SessionExpired,
            14 => Self::TryAgain,
            15 => Self::NotPersisted,
            16 => Self::Unauthorized,
            _ => Self::Other,
        }
    }

    /// Splits an error reply's body into its kind and its text (an empty body: `Other`, no text).
    pub fn read(body: &[u8]) -> (Self, String) {
        match body.split_first() {
            Some((&k, text)) => (Self::from_u8(k), String::from_utf8_lossy(text).into_owned()),
            None => (Self::Other, String::new()),
        }
    }
}

impl std::fmt::Display for RemoteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Other => "error",
            Self::NoSuchMethod => "no such method",
            Self::BadArguments => "bad arguments",
            Self::BadReply => "bad reply",
            Self::NoReplica => "no replica",
            Self::Unordered => "unordered shard",
            Self::NotSynchronous => "not synchronous",
            Self::Overloaded => "overloaded",
            Self::Stopped => "stopped",
            Self::NotSettled => "not settled",
            Self::ReplyLost => "reply lost",
            Self::TypeMismatch => "type mismatch",
            Self::TooLarge => "too large",
            Self::SessionExpired => "session expired",
            Self::TryAgain => "try again",
            Self::NotPersisted => "not persisted",
            Self::Unauthorized => "unauthorized",
        })
    }
}
