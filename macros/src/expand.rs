//! The items `#[replicated]` generates, one function each. Every path is absolute, so user code
//! that shadows `Result`, `Vec` or `rkyv` changes nothing (`tests/tests/macro_hygiene.rs`).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Ident, ItemImpl, Type, Visibility};

use crate::model::{ArgKind, Method, Model};

/// The crate paths the generated code names.
fn rkyv() -> TokenStream {
    quote!(::derecho::rpc::support::rkyv)
}

fn args_type(m: &Model, method: &Method) -> Ident {
    format_ident!("__DerechoArgs_{}_{}", m.ty, method.name)
}

/// Everything: the block as written, the argument types, the `Replicated` implementation and
/// the client.
pub fn expand(m: &Model, item: &ItemImpl) -> TokenStream {
    let args = m.methods.iter().map(|method| args_struct(m, method));
    let replicated = replicated_impl(m);
    let client = client(m);
    let external = external_client(m);
    // With the `python` feature (enabled through `derecho`'s), a Python class of the external
    // client too.
    let python = if cfg!(feature = "python") { python_client(m) } else { TokenStream::new() };
    quote! {
        #item
        #(#args)*
        #replicated
        #client
        #external
        #python
    }
}

/// The archived arguments of one method.
fn args_struct(m: &Model, method: &Method) -> TokenStream {
    let rkyv = rkyv();
    let name = args_type(m, method);
    // The struct is generic over the arguments' own types, and `name` is an alias that names
    // them: the derives' bounds then hold or fail where the alias is used (at the argument's
    // span), not inside the derives (which rustc reports at the attribute).
    let generic = format_ident!("{}_Of", name);
    let params: Vec<Ident> = (0..method.args.len()).map(|i| format_ident!("__A{}", i)).collect();
    let owned: Vec<(&Ident, &Type)> = method
        .args
        .iter()
        .zip(&params)
        .filter_map(|(a, p)| match &a.kind {
            ArgKind::Owned(t) => Some((p, &**t)),
            _ => None,
        })
        .collect();
    let (owned_params, owned_types): (Vec<&Ident>, Vec<&Type>) = owned.into_iter().unzip();
    let fields = method.args.iter().zip(&params).map(|(a, p)| {
        let n = &a.name;
        match &a.kind {
            ArgKind::Str => quote!(#n: ::std::string::String),
            ArgKind::Bytes => quote!(#n: ::std::vec::Vec<u8>),
            ArgKind::Owned(_) => quote_spanned!(a.span=> #n: #p),
        }
    });
    // Each argument type must be archivable; checked at the argument's own span, so the error
    // points at the signature rather than at the attribute.
    let checks = method.args.iter().filter_map(|a| match &a.kind {
        ArgKind::Owned(t) => Some(quote_spanned! {a.span=>
            const _: fn() = || {
                fn archivable<T: #rkyv::Archive + #rkyv::Serialize<#rkyv::rancor::Strategy<
                    #rkyv::ser::Serializer<#rkyv::util::AlignedVec, #rkyv::ser::allocator::ArenaHandle<'static>, #rkyv::ser::sharing::Share>,
                    #rkyv::rancor::Error>>>() {}
                archivable::<#t>();
            };
        }),
        _ => None,
    });
    // The struct and its derives carry the arguments' span too: an argument type that cannot
    // be archived is reported there, not at the attribute.
    let span = args_span(method);
    let alias = quote_spanned! {span=> type #name = #generic<#(#owned_types),*>; };
    quote! {
        #(#checks)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #[derive(#rkyv::Archive, #rkyv::Serialize)]
        #[rkyv(crate = #rkyv)]
        struct #generic<#(#owned_params),*> { #(#fields,)* }
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #alias
    }
}

/// Where a method's arguments are: its first argument of a type of its own (the one that
/// may not be archivable), else its name.
fn args_span(method: &Method) -> proc_macro2::Span {
    method.args.iter().find(|a| matches!(a.kind, ArgKind::Owned(_))).map_or(method.name.span(), |a| a.span)
}

/// The dispatch of one method: validate the arguments in place, call, archive the reply.
fn dispatch_arm(m: &Model, index: u32, method: &Method) -> TokenStream {
    let rkyv = rkyv();
    let args_ty = args_type(m, method);
    let name = &method.name;
    let name_str = name.to_string();
    let pass = method.args.iter().map(|a| {
        let n = &a.name;
        match &a.kind {
            ArgKind::Str => quote!(__a.#n.as_str()),
            ArgKind::Bytes => quote!(__a.#n.as_slice()),
            ArgKind::Owned(t) => quote_spanned! {a.span=>
                #rkyv::deserialize::<#t, #rkyv::rancor::Error>(&__a.#n)
                    .map_err(|e| ::derecho::rpc::support::bad_arguments(#name_str, e))?
            },
        }
    });
    let ret = &method.ret;
    let reply = quote_spanned! {syn::spanned::Spanned::span(ret)=>
        #rkyv::api::high::to_bytes_in::<_, #rkyv::rancor::Error>(
            &__reply,
            ::derecho::rpc::support::ReplyWriter(::derecho::rpc::support::reply_buffer()),
        )
        .map(|__w| __w.0)
    };
    let archived = quote_spanned! {args_span(method)=> <#args_ty as #rkyv::Archive>::Archived };
    if method.is_async {
        // The future outlives the receive buffer: it owns an aligned copy of the arguments.
        return quote! {
            #index => {
                let mut __owned = #rkyv::util::AlignedVec::<16>::new();
                __owned.extend_from_slice(__args);
                ::derecho::rpc::Applied::Later(::std::boxed::Box::pin(async move {
                    let __a = #rkyv::access::<#archived, #rkyv::rancor::Error>(&__owned)
                        .map_err(|e| ::derecho::rpc::support::bad_arguments(#name_str, e))?;
                    let __reply: #ret = self.#name(#(#pass),*).await;
                    #reply.map_err(|e| ::derecho::rpc::support::bad_reply(#name_str, e))
                }))
            }
        };
    }
    quote! {
        #index => ::derecho::rpc::Applied::Now(::derecho::rpc::support::aligned(__args, |__bytes| {
            let __a = #rkyv::access::<#archived, #rkyv::rancor::Error>(__bytes)
                .map_err(|e| ::derecho::rpc::support::bad_arguments(#name_str, e))?;
            let __reply: #ret = self.#name(#(#pass),*);
            #reply.map_err(|e| ::derecho::rpc::support::bad_reply(#name_str, e))
        })),
    }
}

/// `impl ::derecho::rpc::Replicated for T`.
fn replicated_impl(m: &Model) -> TokenStream {
    let rkyv = rkyv();
    let ty = &m.ty;
    let ty_str = ty.to_string();
    let table = m.methods.iter().map(|method| {
        let (n, o, a) = (method.name.to_string(), method.ordered, method.is_async);
        quote!(::derecho::rpc::Method { name: #n, ordered: #o, is_async: #a })
    });
    let arms = |ordered: bool| {
        m.methods
            .iter()
            .enumerate()
            .filter(move |(_, method)| method.ordered == ordered)
            .map(|(i, method)| dispatch_arm(m, i as u32, method))
            .collect::<Vec<_>>()
    };
    let (ordered_arms, query_arms) = (arms(true), arms(false));
    let result = quote!(::derecho::rpc::Applied<'__a>);
    let state_span = ty.span();
    let snapshot = quote_spanned! {state_span=>
        #rkyv::to_bytes::<#rkyv::rancor::Error>(self)
    };
    let fingerprint = fingerprint(m);
    let client = format_ident!("{}Client", ty);
    quote! {
        impl ::derecho::rpc::Replicated for #ty {
            type Client = #client;
            const NAME: &'static str = #ty_str;
            const METHODS: &'static [::derecho::rpc::Method] = &[#(#table),*];
            const FINGERPRINT: u64 = #fingerprint;

            #[allow(unreachable_code, unused_variables)]
            fn apply<'__a>(&'__a mut self, __method: u32, __args: &[u8]) -> #result {
                match __method {
                    #(#ordered_arms)*
                    _ => ::derecho::rpc::Applied::Now(::core::result::Result::Err(
                        ::derecho::rpc::HandlerError::NoSuchMethod { ty: #ty_str, method: __method, kind: "ordered" },
                    )),
                }
            }

            #[allow(unreachable_code, unused_variables)]
            fn query<'__a>(&'__a self, __method: u32, __args: &[u8]) -> #result {
                match __method {
                    #(#query_arms)*
                    _ => ::derecho::rpc::Applied::Now(::core::result::Result::Err(
                        ::derecho::rpc::HandlerError::NoSuchMethod { ty: #ty_str, method: __method, kind: "query" },
                    )),
                }
            }

            fn snapshot(&self) -> ::core::result::Result<::std::vec::Vec<u8>, ::derecho::rpc::StateError> {
                #snapshot
                    .map(|v| v.as_slice().to_vec())
                    .map_err(|e| ::derecho::rpc::support::state_error(#ty_str, e))
            }

            fn restore(__state: &[u8]) -> ::core::result::Result<Self, ::derecho::rpc::StateError> {
                ::derecho::rpc::support::aligned(__state, |__b| #rkyv::from_bytes::<Self, #rkyv::rancor::Error>(__b))
                    .map_err(|e| ::derecho::rpc::support::state_error(#ty_str, e))
            }
        }
    }
}

/// A fingerprint of the type's method table: each method's index, name, kind, argument types
/// and reply type, as written (FNV-1a, 64 bits). Members that disagree on it disagree on what a
/// method id means; joins and external clients check it.
fn fingerprint(m: &Model) -> u64 {
    let mut text = m.ty.to_string();
    for (i, method) in m.methods.iter().enumerate() {
        let args: Vec<String> = method
            .args
            .iter()
            .map(|a| match &a.kind {
                crate::model::ArgKind::Str => "&str".to_string(),
                crate::model::ArgKind::Bytes => "&[u8]".to_string(),
                crate::model::ArgKind::Owned(t) => quote!(#t).to_string(),
            })
            .collect();
        let ret = &method.ret;
        text.push_str(&format!(
            ";{i}:{}:{}:{}({})->{}",
            method.name,
            if method.ordered { "ordered" } else { "query" },
            if method.is_async { "async" } else { "sync" },
            args.join(","),
            quote!(#ret)
        ));
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `TClient`: one async method per source method.
fn client(m: &Model) -> TokenStream {
    let ty = &m.ty;
    let client = format_ident!("{}Client", ty);
    let vis = client_vis(m);
    let doc = format!("Calls into the replicas of [`{ty}`] in one shard (generated by `#[replicated]`).");
    let methods = m.methods.iter().enumerate().map(|(i, method)| {
        let index = i as u32;
        let name = &method.name;
        let mvis = &method.vis;
        let params = params(method);
        let ret = &method.ret;
        let docs = &method.docs;
        let encode = encode_args(m, method, quote!(::derecho::rpc::CallError));
        let decode = decoder(method);
        if method.ordered {
            let doc = format!("Ordered `{name}`: applied by every replica of the shard; every replica's reply.");
            let each = format_ident!("{}_each", name);
            let each_doc = format!("Ordered `{name}`, with each replica's reply as it arrives.");
            quote! {
                #[doc = #each_doc]
                #mvis async fn #each(&self, #(#params),*)
                    -> ::core::result::Result<::derecho::rpc::ReplyStream<#ret>, ::derecho::rpc::CallError>
                {
                    #encode
                    let __stream = self.handle.ordered_each_raw(#index, &__bytes).await?;
                    ::core::result::Result::Ok(__stream.map(|__node, __r| {
                        #decode(&__r).map_err(|e| ::derecho::rpc::CallError::BadReply {
                            node: __node, reason: ::std::string::ToString::to_string(&e),
                        })
                    }))
                }

                #(#docs)*
                #[doc = ""]
                #[doc = #doc]
                #mvis async fn #name(&self, #(#params),*)
                    -> ::core::result::Result<::derecho::rpc::Replies<#ret>, ::derecho::rpc::CallError>
                {
                    #encode
                    let __replies = self.handle.ordered_raw(#index, &__bytes).await?;
                    ::core::result::Result::Ok(__replies.map(|__node, __r| {
                        #decode(&__r).map_err(|e| ::derecho::rpc::CallError::BadReply {
                            node: __node, reason: ::std::string::ToString::to_string(&e),
                        })
                    }))
                }
            }
        } else {
            let doc = format!("Query `{name}`, run by member `to` of the shard.");
            quote! {
                #(#docs)*
                #[doc = ""]
                #[doc = #doc]
                #mvis async fn #name(&self, to: ::derecho::protocol::NodeId, #(#params),*)
                    -> ::core::result::Result<#ret, ::derecho::rpc::CallError>
                {
                    #encode
                    let __r = self.handle.query_raw(to, #index, &__bytes).await?;
                    #decode(&__r).map_err(|e| ::derecho::rpc::CallError::BadReply {
                        node: to, reason: ::std::string::ToString::to_string(&e),
                    })
                }
            }
        }
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #[allow(dead_code)]
        #vis struct #client {
            handle: ::derecho::rpc::Handle<#ty>,
        }

        #[allow(dead_code)]
        impl #client {
            /// A client calling through `handle`.
            #vis fn new(handle: ::derecho::rpc::Handle<#ty>) -> Self {
                Self { handle }
            }

            /// The handle it calls through.
            #vis fn handle(&self) -> &::derecho::rpc::Handle<#ty> {
                &self.handle
            }

            #(#methods)*
        }

        impl ::core::convert::From<::derecho::rpc::Handle<#ty>> for #client {
            fn from(handle: ::derecho::rpc::Handle<#ty>) -> Self {
                Self { handle }
            }
        }
    }
}

/// `TExternal`: the calls of `T` (queries, and ordered calls relayed by a member), for processes
/// outside the group.
fn external_client(m: &Model) -> TokenStream {
    let ty = &m.ty;
    let name = format_ident!("{}External", ty);
    let vis = client_vis(m);
    let doc = format!("Calls into the replicas of [`{ty}`] from outside the group (generated by `#[replicated]`).");
    let methods = m.methods.iter().enumerate().map(|(i, method)| {
        let index = i as u32;
        let mname = &method.name;
        let mvis = &method.vis;
        let docs = &method.docs;
        let params = params(method);
        let ret = &method.ret;
        let decode = decoder(method);
        let encode = encode_args(m, method, quote!(::derecho::rpc::ClientError));
        let bad = quote!(|e| ::derecho::rpc::ClientError::BadReply(::std::string::ToString::to_string(&e)));
        if method.ordered {
            return quote! {
                #(#docs)*
                #[doc = ""]
                #[doc = "Relayed by a member of the shard; the version it was applied at, and that member's reply."]
                #mvis async fn #mname(&self, #(#params),*)
                    -> ::core::result::Result<(::derecho::protocol::Version, #ret), ::derecho::rpc::ClientError>
                {
                    #encode
                    let (__v, __r) = self.handle.ordered_raw(#index, &__bytes).await?;
                    ::core::result::Result::Ok((__v, #decode(&__r).map_err(#bad)?))
                }
            };
        }
        quote! {
            #(#docs)*
            #[doc = ""]
            #[doc = "Asked of member `to`, or with `None` of any member of the shard."]
            #mvis async fn #mname(&self, to: ::core::option::Option<::derecho::protocol::NodeId>, #(#params),*)
                -> ::core::result::Result<#ret, ::derecho::rpc::ClientError>
            {
                #encode
                let __r = self.handle.query_raw(to, #index, &__bytes).await?;
                #decode(&__r).map_err(#bad)
            }
        }
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #[allow(dead_code)]
        #vis struct #name {
            handle: ::derecho::rpc::ExternalHandle<#ty>,
        }

        #[allow(dead_code)]
        impl #name {
            /// Queries through `handle`.
            #vis fn new(handle: ::derecho::rpc::ExternalHandle<#ty>) -> Self {
                Self { handle }
            }

            /// The handle it queries through.
            #vis fn handle(&self) -> &::derecho::rpc::ExternalHandle<#ty> {
                &self.handle
            }

            #(#methods)*
        }
    }
}

/// `TPython`: a Python class (PyO3) named like `T` whose methods are `TExternal`'s, run with the
/// interpreter's lock released; errors raise `derecho.ClientError` (its `args`: the message and
/// the kind), and a method returning `Result` raises `ValueError` for its `Err`.
fn python_client(m: &Model) -> TokenStream {
    let ty = &m.ty;
    let name = format_ident!("{}Python", ty);
    let external = format_ident!("{}External", ty);
    let vis = client_vis(m);
    let py_name = ty.to_string();
    let pyo3 = quote!(::derecho::rpc::support::python::pyo3);
    let support = quote!(::derecho::rpc::support::python);
    let krate = "::derecho::rpc::support::python::pyo3";
    let doc =
        format!("The Python class `{ty}`: [`{external}`]'s calls (generated by `#[replicated]`, feature `python`).");
    let methods = m.methods.iter().map(|method| {
        let mname = &method.name;
        let docs = &method.docs;
        let params = params(method);
        let names: Vec<&Ident> = method.args.iter().map(|a| &a.name).collect();
        let (ret, is_result) = match result_ok(&method.ret) {
            Some(ok) => (ok.clone(), true),
            None => (method.ret.clone(), false),
        };
        let unwrap = if is_result {
            quote!(let __r = __r.map_err(|e| #pyo3::exceptions::PyValueError::new_err(::std::string::ToString::to_string(&e)))?;)
        } else {
            quote!()
        };
        if method.ordered {
            quote! {
                #(#docs)*
                #[pyo3(signature = (#(#names),*))]
                fn #mname(&self, py: #pyo3::Python<'_>, #(#params),*) -> #pyo3::PyResult<(u64, #ret)> {
                    let (__v, __r) = py
                        .detach(|| ::derecho::rpc::block_on(self.inner.#mname(#(#names),*)))
                        .map_err(#support::client_error)?;
                    #unwrap
                    ::core::result::Result::Ok((__v.as_u64(), __r))
                }
            }
        } else {
            quote! {
                #(#docs)*
                #[pyo3(signature = (#(#names,)* to = None))]
                fn #mname(&self, py: #pyo3::Python<'_>, #(#params,)* to: ::core::option::Option<u32>) -> #pyo3::PyResult<#ret> {
                    let __to = to.map(::derecho::protocol::NodeId);
                    let __r = py
                        .detach(|| ::derecho::rpc::block_on(self.inner.#mname(__to, #(#names),*)))
                        .map_err(#support::client_error)?;
                    #unwrap
                    ::core::result::Result::Ok(__r)
                }
            }
        }
    });
    quote! {
        #[doc = #doc]
        #[#pyo3::pyclass(name = #py_name, frozen, crate = #krate)]
        #vis struct #name {
            inner: #external,
        }

        #[#pyo3::pymethods(crate = #krate)]
        impl #name {
            /// Connects to the group `group` through the members at `contacts` (`host:port`)
            /// and calls into `shard` (subgroup, shard); each call may take `timeout` seconds.
            /// With `ca`, `cert` and `key` (PEM files: the group's authority, this client's
            /// certificate and its key), every connection is mutual TLS.
            #[staticmethod]
            #[pyo3(signature = (contacts, group = ::std::string::String::from("derecho"), shard = (0, 0), timeout = 10.0, ca = None, cert = None, key = None))]
            #[allow(clippy::too_many_arguments)]
            fn connect(
                py: #pyo3::Python<'_>,
                contacts: ::std::vec::Vec<::std::string::String>,
                group: ::std::string::String,
                shard: (u16, u16),
                timeout: f64,
                ca: ::core::option::Option<::std::string::String>,
                cert: ::core::option::Option<::std::string::String>,
                key: ::core::option::Option<::std::string::String>,
            ) -> #pyo3::PyResult<Self> {
                let client = #support::connect(py, &group, contacts, timeout, (ca, cert, key))?;
                let handle = ::derecho::rpc::ExternalHandle::<#ty>::new(client, ::derecho::protocol::ShardRef::new(shard.0, shard.1));
                ::core::result::Result::Ok(Self { inner: #external::new(handle) })
            }

            /// The members of the view as last fetched: (node id, address) pairs.
            fn members(&self) -> ::std::vec::Vec<(u32, ::std::string::String)> {
                #support::members(self.inner.handle().client())
            }

            /// The shards of the view as last fetched: ((subgroup, shard), member ids) pairs.
            fn shards(&self) -> ::std::vec::Vec<((u16, u16), ::std::vec::Vec<u32>)> {
                #support::shards(self.inner.handle().client())
            }

            /// Fetches the view again (after a failure, say).
            fn refresh(&self, py: #pyo3::Python<'_>) -> #pyo3::PyResult<()> {
                py.detach(|| self.inner.handle().client().blocking().refresh_view()).map_err(#support::client_error)?;
                ::core::result::Result::Ok(())
            }

            /// Subscribes to notifications on `topic` at every member; returns how many took it.
            fn subscribe(&self, py: #pyo3::Python<'_>, topic: &str) -> usize {
                py.detach(|| self.inner.handle().client().blocking().subscribe(topic))
            }

            /// The next notification (topic, bytes), or None after `timeout` seconds.
            #[pyo3(signature = (timeout = 1.0))]
            fn next_notification(&self, py: #pyo3::Python<'_>, timeout: f64) -> ::core::option::Option<(::std::string::String, ::std::vec::Vec<u8>)> {
                let within = ::std::time::Duration::from_secs_f64(timeout.max(0.0));
                py.detach(|| self.inner.handle().client().blocking().next_notification(within))
            }

            #(#methods)*
        }
    }
}

/// `T` if `ty` is written `Result<T, E>` (by its last path segment).
fn result_ok(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &last.arguments else { return None };
    match a.args.first()? {
        syn::GenericArgument::Type(t) if a.args.len() == 2 => Some(t),
        _ => None,
    }
}

/// The widest visibility of the methods: `pub` if any is, else the first restricted one.
fn client_vis(m: &Model) -> TokenStream {
    m.methods
        .iter()
        .map(|x| &x.vis)
        .find(|v| matches!(v, Visibility::Public(_)))
        .or_else(|| m.methods.iter().map(|x| &x.vis).find(|v| matches!(v, Visibility::Restricted(_))))
        .map_or_else(TokenStream::new, |v| quote!(#v))
}

/// A client method's parameters: the source method's, borrowed arguments kept borrowed.
fn params(method: &Method) -> Vec<TokenStream> {
    method
        .args
        .iter()
        .map(|a| {
            let n = &a.name;
            match &a.kind {
                ArgKind::Str => quote!(#n: &str),
                ArgKind::Bytes => quote!(#n: &[u8]),
                ArgKind::Owned(t) => quote_spanned!(a.span=> #n: #t),
            }
        })
        .collect()
}

/// The fields of the archived arguments, from a client method's parameters.
fn build(method: &Method) -> Vec<TokenStream> {
    method
        .args
        .iter()
        .map(|a| {
            let n = &a.name;
            match &a.kind {
                ArgKind::Str | ArgKind::Bytes => quote!(#n: ::std::borrow::ToOwned::to_owned(#n)),
                ArgKind::Owned(_) => quote!(#n),
            }
        })
        .collect()
}

/// The statements that archive a client method's arguments into `__bytes`; an error becomes
/// `#error::Arguments`.
fn encode_args(m: &Model, method: &Method, error: TokenStream) -> TokenStream {
    let rkyv = rkyv();
    let args_ty = args_type(m, method);
    let build = build(method);
    let to_bytes = quote_spanned! {args_span(method)=> #rkyv::to_bytes::<#rkyv::rancor::Error>(&__args) };
    quote! {
        let __args = #args_ty { #(#build,)* };
        let __bytes = #to_bytes
            .map_err(|e| #error::Arguments(::std::string::ToString::to_string(&e)))?;
    }
}

/// The function that reads a method's archived reply (spanned at the return type, where an
/// error about it belongs).
fn decoder(method: &Method) -> TokenStream {
    let rkyv = rkyv();
    let ret = &method.ret;
    quote_spanned! {syn::spanned::Spanned::span(ret)=>
        #rkyv::from_bytes::<#ret, #rkyv::rancor::Error>
    }
}
