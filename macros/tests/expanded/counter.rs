impl Counter {
    /// Adds `by`, tagged `label`.
    pub fn add(&mut self, by: u64, label: &str) -> u64 {
        self.n += by;
        self.n
    }
    pub fn get(&self) -> u64 {
        self.n
    }
    pub fn new() -> Self {
        Self { n: 0 }
    }
}
const _: fn() = || {
    fn archivable<
        T: ::derecho::rpc::support::rkyv::Archive
            + ::derecho::rpc::support::rkyv::Serialize<
                ::derecho::rpc::support::rkyv::rancor::Strategy<
                    ::derecho::rpc::support::rkyv::ser::Serializer<
                        ::derecho::rpc::support::rkyv::util::AlignedVec,
                        ::derecho::rpc::support::rkyv::ser::allocator::ArenaHandle<
                            'static,
                        >,
                        ::derecho::rpc::support::rkyv::ser::sharing::Share,
                    >,
                    ::derecho::rpc::support::rkyv::rancor::Error,
                >,
            >,
    >() {}
    archivable::<u64>();
};
#[doc(hidden)]
#[allow(non_camel_case_types, dead_code)]
#[derive(
    ::derecho::rpc::support::rkyv::Archive,
    ::derecho::rpc::support::rkyv::Serialize
)]
#[rkyv(crate = ::derecho::rpc::support::rkyv)]
struct __DerechoArgs_Counter_add_Of<__A0> {
    by: __A0,
    label: ::std::string::String,
}
#[doc(hidden)]
#[allow(non_camel_case_types, dead_code)]
type __DerechoArgs_Counter_add = __DerechoArgs_Counter_add_Of<u64>;
#[doc(hidden)]
#[allow(non_camel_case_types, dead_code)]
#[derive(
    ::derecho::rpc::support::rkyv::Archive,
    ::derecho::rpc::support::rkyv::Serialize
)]
#[rkyv(crate = ::derecho::rpc::support::rkyv)]
struct __DerechoArgs_Counter_get_Of {}
#[doc(hidden)]
#[allow(non_camel_case_types, dead_code)]
type __DerechoArgs_Counter_get = __DerechoArgs_Counter_get_Of;
impl ::derecho::rpc::Replicated for Counter {
    type Client = CounterClient;
    const NAME: &'static str = "Counter";
    const METHODS: &'static [::derecho::rpc::Method] = &[
        ::derecho::rpc::Method {
            name: "add",
            ordered: true,
            is_async: false,
        },
        ::derecho::rpc::Method {
            name: "get",
            ordered: false,
            is_async: false,
        },
    ];
    const FINGERPRINT: u64 = 5122357202943993568u64;
    #[allow(unreachable_code, unused_variables)]
    fn apply<'__a>(
        &'__a mut self,
        __method: u32,
        __args: &[u8],
    ) -> ::derecho::rpc::Applied<'__a> {
        match __method {
            0u32 => {
                ::derecho::rpc::Applied::Now(
                    ::derecho::rpc::support::aligned(
                        __args,
                        |__bytes| {
                            let __a = ::derecho::rpc::support::rkyv::access::<
                                <__DerechoArgs_Counter_add as ::derecho::rpc::support::rkyv::Archive>::Archived,
                                ::derecho::rpc::support::rkyv::rancor::Error,
                            >(__bytes)
                                .map_err(|e| ::derecho::rpc::support::bad_arguments(
                                    "add",
                                    e,
                                ))?;
                            let __reply: u64 = self
                                .add(
                                    ::derecho::rpc::support::rkyv::deserialize::<
                                        u64,
                                        ::derecho::rpc::support::rkyv::rancor::Error,
                                    >(&__a.by)
                                        .map_err(|e| ::derecho::rpc::support::bad_arguments(
                                            "add",
                                            e,
                                        ))?,
                                    __a.label.as_str(),
                                );
                            ::derecho::rpc::support::rkyv::api::high::to_bytes_in::<
                                _,
                                ::derecho::rpc::support::rkyv::rancor::Error,
                            >(
                                    &__reply,
                                    ::derecho::rpc::support::ReplyWriter(
                                        ::derecho::rpc::support::reply_buffer(),
                                    ),
                                )
                                .map(|__w| __w.0)
                                .map_err(|e| ::derecho::rpc::support::bad_reply("add", e))
                        },
                    ),
                )
            }
            _ => {
                ::derecho::rpc::Applied::Now(
                    ::core::result::Result::Err(::derecho::rpc::HandlerError::NoSuchMethod {
                        ty: "Counter",
                        method: __method,
                        kind: "ordered",
                    }),
                )
            }
        }
    }
    #[allow(unreachable_code, unused_variables)]
    fn query<'__a>(
        &'__a self,
        __method: u32,
        __args: &[u8],
    ) -> ::derecho::rpc::Applied<'__a> {
        match __method {
            1u32 => {
                ::derecho::rpc::Applied::Now(
                    ::derecho::rpc::support::aligned(
                        __args,
                        |__bytes| {
                            let __a = ::derecho::rpc::support::rkyv::access::<
                                <__DerechoArgs_Counter_get as ::derecho::rpc::support::rkyv::Archive>::Archived,
                                ::derecho::rpc::support::rkyv::rancor::Error,
                            >(__bytes)
                                .map_err(|e| ::derecho::rpc::support::bad_arguments(
                                    "get",
                                    e,
                                ))?;
                            let __reply: u64 = self.get();
                            ::derecho::rpc::support::rkyv::api::high::to_bytes_in::<
                                _,
                                ::derecho::rpc::support::rkyv::rancor::Error,
                            >(
                                    &__reply,
                                    ::derecho::rpc::support::ReplyWriter(
                                        ::derecho::rpc::support::reply_buffer(),
                                    ),
                                )
                                .map(|__w| __w.0)
                                .map_err(|e| ::derecho::rpc::support::bad_reply("get", e))
                        },
                    ),
                )
            }
            _ => {
                ::derecho::rpc::Applied::Now(
                    ::core::result::Result::Err(::derecho::rpc::HandlerError::NoSuchMethod {
                        ty: "Counter",
                        method: __method,
                        kind: "query",
                    }),
                )
            }
        }
    }
    fn snapshot(
        &self,
    ) -> ::core::result::Result<::std::vec::Vec<u8>, ::derecho::rpc::StateError> {
        ::derecho::rpc::support::rkyv::to_bytes::<
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(self)
            .map(|v| v.as_slice().to_vec())
            .map_err(|e| ::derecho::rpc::support::state_error("Counter", e))
    }
    fn restore(
        __state: &[u8],
    ) -> ::core::result::Result<Self, ::derecho::rpc::StateError> {
        ::derecho::rpc::support::aligned(
                __state,
                |__b| ::derecho::rpc::support::rkyv::from_bytes::<
                    Self,
                    ::derecho::rpc::support::rkyv::rancor::Error,
                >(__b),
            )
            .map_err(|e| ::derecho::rpc::support::state_error("Counter", e))
    }
}
///Calls into the replicas of [`Counter`] in one shard (generated by `#[replicated]`).
#[derive(::core::fmt::Debug, ::core::clone::Clone)]
#[allow(dead_code)]
pub struct CounterClient {
    handle: ::derecho::rpc::Handle<Counter>,
}
#[allow(dead_code)]
impl CounterClient {
    /// A client calling through `handle`.
    pub fn new(handle: ::derecho::rpc::Handle<Counter>) -> Self {
        Self { handle }
    }
    /// The handle it calls through.
    pub fn handle(&self) -> &::derecho::rpc::Handle<Counter> {
        &self.handle
    }
    ///Ordered `add`, with each replica's reply as it arrives.
    pub async fn add_each(
        &self,
        by: u64,
        label: &str,
    ) -> ::core::result::Result<
        ::derecho::rpc::ReplyStream<u64>,
        ::derecho::rpc::CallError,
    > {
        let __args = __DerechoArgs_Counter_add {
            by,
            label: ::std::borrow::ToOwned::to_owned(label),
        };
        let __bytes = ::derecho::rpc::support::rkyv::to_bytes::<
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__args)
            .map_err(|e| ::derecho::rpc::CallError::Arguments(
                ::std::string::ToString::to_string(&e),
            ))?;
        let __stream = self.handle.ordered_each_raw(0u32, &__bytes).await?;
        ::core::result::Result::Ok(
            __stream
                .map(|__node, __r| {
                    ::derecho::rpc::support::rkyv::from_bytes::<
                        u64,
                        ::derecho::rpc::support::rkyv::rancor::Error,
                    >(&__r)
                        .map_err(|e| ::derecho::rpc::CallError::BadReply {
                            node: __node,
                            reason: ::std::string::ToString::to_string(&e),
                        })
                }),
        )
    }
    /// Adds `by`, tagged `label`.
    ///
    ///Ordered `add`: applied by every replica of the shard; every replica's reply.
    pub async fn add(
        &self,
        by: u64,
        label: &str,
    ) -> ::core::result::Result<
        ::derecho::rpc::Replies<u64>,
        ::derecho::rpc::CallError,
    > {
        let __args = __DerechoArgs_Counter_add {
            by,
            label: ::std::borrow::ToOwned::to_owned(label),
        };
        let __bytes = ::derecho::rpc::support::rkyv::to_bytes::<
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__args)
            .map_err(|e| ::derecho::rpc::CallError::Arguments(
                ::std::string::ToString::to_string(&e),
            ))?;
        let __replies = self.handle.ordered_raw(0u32, &__bytes).await?;
        ::core::result::Result::Ok(
            __replies
                .map(|__node, __r| {
                    ::derecho::rpc::support::rkyv::from_bytes::<
                        u64,
                        ::derecho::rpc::support::rkyv::rancor::Error,
                    >(&__r)
                        .map_err(|e| ::derecho::rpc::CallError::BadReply {
                            node: __node,
                            reason: ::std::string::ToString::to_string(&e),
                        })
                }),
        )
    }
    ///
    ///Query `get`, run by member `to` of the shard.
    pub async fn get(
        &self,
        to: ::derecho::protocol::NodeId,
    ) -> ::core::result::Result<u64, ::derecho::rpc::CallError> {
        let __args = __DerechoArgs_Counter_get {};
        let __bytes = ::derecho::rpc::support::rkyv::to_bytes::<
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__args)
            .map_err(|e| ::derecho::rpc::CallError::Arguments(
                ::std::string::ToString::to_string(&e),
            ))?;
        let __r = self.handle.query_raw(to, 1u32, &__bytes).await?;
        ::derecho::rpc::support::rkyv::from_bytes::<
            u64,
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__r)
            .map_err(|e| ::derecho::rpc::CallError::BadReply {
                node: to,
                reason: ::std::string::ToString::to_string(&e),
            })
    }
}
impl ::core::convert::From<::derecho::rpc::Handle<Counter>> for CounterClient {
    fn from(handle: ::derecho::rpc::Handle<Counter>) -> Self {
        Self { handle }
    }
}
///Calls into the replicas of [`Counter`] from outside the group (generated by `#[replicated]`).
#[derive(::core::fmt::Debug, ::core::clone::Clone)]
#[allow(dead_code)]
pub struct CounterExternal {
    handle: ::derecho::rpc::ExternalHandle<Counter>,
}
#[allow(dead_code)]
impl CounterExternal {
    /// Queries through `handle`.
    pub fn new(handle: ::derecho::rpc::ExternalHandle<Counter>) -> Self {
        Self { handle }
    }
    /// The handle it queries through.
    pub fn handle(&self) -> &::derecho::rpc::ExternalHandle<Counter> {
        &self.handle
    }
    /// Adds `by`, tagged `label`.
    ///
    ///Relayed by a member of the shard; the version it was applied at, and that member's reply.
    pub async fn add(
        &self,
        by: u64,
        label: &str,
    ) -> ::core::result::Result<
        (::derecho::protocol::Version, u64),
        ::derecho::rpc::ClientError,
    > {
        let __args = __DerechoArgs_Counter_add {
            by,
            label: ::std::borrow::ToOwned::to_owned(label),
        };
        let __bytes = ::derecho::rpc::support::rkyv::to_bytes::<
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__args)
            .map_err(|e| ::derecho::rpc::ClientError::Arguments(
                ::std::string::ToString::to_string(&e),
            ))?;
        let (__v, __r) = self.handle.ordered_raw(0u32, &__bytes).await?;
        ::core::result::Result::Ok((
            __v,
            ::derecho::rpc::support::rkyv::from_bytes::<
                u64,
                ::derecho::rpc::support::rkyv::rancor::Error,
            >(&__r)
                .map_err(|e| ::derecho::rpc::ClientError::BadReply(
                    ::std::string::ToString::to_string(&e),
                ))?,
        ))
    }
    ///
    ///Asked of member `to`, or with `None` of any member of the shard.
    pub async fn get(
        &self,
        to: ::core::option::Option<::derecho::protocol::NodeId>,
    ) -> ::core::result::Result<u64, ::derecho::rpc::ClientError> {
        let __args = __DerechoArgs_Counter_get {};
        let __bytes = ::derecho::rpc::support::rkyv::to_bytes::<
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__args)
            .map_err(|e| ::derecho::rpc::ClientError::Arguments(
                ::std::string::ToString::to_string(&e),
            ))?;
        let __r = self.handle.query_raw(to, 1u32, &__bytes).await?;
        ::derecho::rpc::support::rkyv::from_bytes::<
            u64,
            ::derecho::rpc::support::rkyv::rancor::Error,
        >(&__r)
            .map_err(|e| ::derecho::rpc::ClientError::BadReply(
                ::std::string::ToString::to_string(&e),
            ))
    }
}
