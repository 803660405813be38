//! The `impl` block of a `#[replicated]` type, parsed and validated.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ItemImpl, Pat, ReturnType, Type, Visibility};

/// How an argument travels.
pub enum ArgKind {
    /// `&str`: archived as a `String`, handed to the method borrowed from the receive buffer.
    Str,
    /// `&[u8]`: archived as a `Vec<u8>`, handed to the method borrowed.
    Bytes,
    /// Any owned type: archived as itself and deserialized for the method.
    Owned(Box<Type>),
}

/// One argument.
pub struct Arg {
    pub name: Ident,
    pub kind: ArgKind,
    pub span: Span,
}

/// One method of the block that becomes an operation.
pub struct Method {
    pub name: Ident,
    /// The method's doc comments, repeated on the client's method.
    pub docs: Vec<syn::Attribute>,
    pub vis: Visibility,
    /// `&mut self`: an ordered operation; `&self`: a query.
    pub ordered: bool,
    /// An `async fn`.
    pub is_async: bool,
    pub args: Vec<Arg>,
    /// The return type; `()` when there is none.
    pub ret: Type,
}

/// The whole block.
pub struct Model {
    /// The type's name.
    pub ty: Ident,
    pub methods: Vec<Method>,
}

/// Names the generated `Replicated` implementation and client use; a method may not take them.
const RESERVED: &[&str] = &["apply", "query", "snapshot", "restore", "NAME", "METHODS", "FINGERPRINT", "new", "handle"];

impl Model {
    /// Parses the block; returns every error found, each at its span.
    pub fn parse(attr: &TokenStream, item: &ItemImpl) -> Result<Self, Vec<syn::Error>> {
        let mut errors = Vec::new();
        if !attr.is_empty() {
            errors.push(syn::Error::new(attr.span(), "#[replicated] takes no arguments"));
        }
        if let Some((_, path, _)) = &item.trait_ {
            errors.push(syn::Error::new(path.span(), "#[replicated] goes on an inherent impl, not a trait impl"));
        }
        if !item.generics.params.is_empty() {
            errors.push(syn::Error::new(item.generics.span(), "a replicated type cannot be generic"));
        }
        let ty = match &*item.self_ty {
            Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
                let seg = &p.path.segments[0];
                if !seg.arguments.is_empty() {
                    errors.push(syn::Error::new(seg.arguments.span(), "a replicated type cannot be generic"));
                }
                Some(seg.ident.clone())
            }
            other => {
                errors
                    .push(syn::Error::new(other.span(), "#[replicated] needs a plain type name: impl MyType { ... }"));
                None
            }
        };
        let mut methods = Vec::new();
        for it in &item.items {
            let ImplItem::Fn(f) = it else { continue };
            // Associated functions (no receiver) stay local: constructors and helpers.
            let Some(FnArg::Receiver(recv)) = f.sig.inputs.first() else { continue };
            let sig = &f.sig;
            let name = sig.ident.clone();
            if let Some(a) = f.attrs.iter().find(|a| a.path().is_ident("cfg")) {
                errors.push(syn::Error::new(
                    a.span(),
                    "#[cfg] on a replicated method would renumber the methods between builds; put \
                     configurable methods in a separate impl block",
                ));
            }
            let docs: Vec<syn::Attribute> = f.attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect();
            if RESERVED.contains(&name.to_string().as_str()) {
                errors.push(syn::Error::new(
                    name.span(),
                    format!("`{name}` is a name the generated code uses (the `Replicated` implementation or the client); rename the method"),
                ));
            }
            if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
                errors.push(syn::Error::new(
                    sig.generics.span(),
                    "a replicated method cannot be generic: every replica must run the same code",
                ));
            }
            if sig.unsafety.is_some() || sig.constness.is_some() || sig.abi.is_some() || sig.variadic.is_some() {
                errors.push(syn::Error::new(sig.span(), "a replicated method is a plain `fn`"));
            }
            let ordered = match (&recv.reference, &recv.mutability) {
                (Some(_), Some(_)) => true,
                (Some(_), None) => false,
                (None, _) => {
                    errors.push(syn::Error::new(
                        recv.span(),
                        "a replicated method takes `&self` (a query) or `&mut self` (an ordered operation), not `self`",
                    ));
                    continue;
                }
            };
            if recv.colon_token.is_some() {
                errors.push(syn::Error::new(recv.span(), "write the receiver as `&self` or `&mut self`"));
            }
            let mut args = Vec::new();
            for input in sig.inputs.iter().skip(1) {
                let FnArg::Typed(pt) = input else { continue };
                let arg_name = match &*pt.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
                    other => {
                        errors
                            .push(syn::Error::new(other.span(), "a replicated method's arguments must be plain names"));
                        continue;
                    }
                };
                if !ordered && arg_name == "to" {
                    errors.push(syn::Error::new(
                        arg_name.span(),
                        "a query's client method takes the member to ask as `to`; rename this argument",
                    ));
                }
                if mentions_self(&pt.ty) {
                    errors
                        .push(syn::Error::new(pt.ty.span(), "name the type instead of `Self` in a replicated method"));
                    continue;
                }
                match arg_kind(&pt.ty) {
                    Ok(kind) => args.push(Arg { name: arg_name, kind, span: pt.ty.span() }),
                    Err(e) => errors.push(e),
                }
            }
            let ret = match &sig.output {
                ReturnType::Default => syn::parse_quote!(()),
                ReturnType::Type(_, t) => {
                    if mentions_self(t) {
                        errors
                            .push(syn::Error::new(t.span(), "name the type instead of `Self` in a replicated method"));
                    } else if contains_reference(t) || contains_impl_trait(t) {
                        errors.push(syn::Error::new(
                            t.span(),
                            "a replicated method returns an owned value (it is archived and sent to the caller)",
                        ));
                    }
                    (**t).clone()
                }
            };
            let is_async = sig.asyncness.is_some();
            methods.push(Method { name, docs, vis: f.vis.clone(), ordered, is_async, args, ret });
        }
        // The client adds `NAME_each` for every ordered method.
        for m in &methods {
            let n = m.name.to_string();
            if let Some(base) = n.strip_suffix("_each")
                && methods.iter().any(|o| o.ordered && o.name == base)
            {
                errors.push(syn::Error::new(
                    m.name.span(),
                    format!("`{n}` is the name the client gives the per-reply form of `{base}`; rename it"),
                ));
            }
        }
        if methods.is_empty() && errors.is_empty() {
            errors.push(syn::Error::new(
                item.self_ty.span(),
                "#[replicated] found no method with `&self` or `&mut self` to replicate",
            ));
        }
        if errors.is_empty() { Ok(Self { ty: ty.expect("no error, so a type"), methods }) } else { Err(errors) }
    }
}

fn arg_kind(ty: &Type) -> Result<ArgKind, syn::Error> {
    match ty {
        Type::Reference(r) => {
            if r.mutability.is_some() {
                return Err(syn::Error::new(ty.span(), "a replicated method cannot take `&mut` arguments"));
            }
            match &*r.elem {
                Type::Path(p) if p.path.is_ident("str") => Ok(ArgKind::Str),
                Type::Slice(s) if matches!(&*s.elem, Type::Path(p) if p.path.is_ident("u8")) => Ok(ArgKind::Bytes),
                _ => Err(syn::Error::new(
                    ty.span(),
                    "a replicated method borrows only `&str` and `&[u8]`; take other arguments by value",
                )),
            }
        }
        Type::TraitObject(_) | Type::Infer(_) | Type::Ptr(_) | Type::BareFn(_) => {
            Err(syn::Error::new(ty.span(), "a replicated method's argument must be a concrete, archivable type"))
        }
        other if contains_impl_trait(other) => Err(syn::Error::new(
            ty.span(),
            "a replicated method's argument must be a concrete, archivable type, not `impl Trait`",
        )),
        other if contains_reference(other) => Err(syn::Error::new(
            ty.span(),
            "a replicated method's argument cannot hold references (it is archived and sent)",
        )),
        other => Ok(ArgKind::Owned(Box::new(other.clone()))),
    }
}

fn contains_reference(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) => true,
        Type::Paren(p) => contains_reference(&p.elem),
        Type::Group(g) => contains_reference(&g.elem),
        Type::Tuple(t) => t.elems.iter().any(contains_reference),
        Type::Array(a) => contains_reference(&a.elem),
        Type::Slice(s) => contains_reference(&s.elem),
        Type::Path(p) => p.path.segments.iter().any(|s| match &s.arguments {
            syn::PathArguments::AngleBracketed(a) => a.args.iter().any(|g| match g {
                syn::GenericArgument::Type(t) => contains_reference(t),
                syn::GenericArgument::Lifetime(l) => l.ident != "static",
                _ => false,
            }),
            _ => false,
        }),
        _ => false,
    }
}

/// Whether `ty` is or holds an `impl Trait`.
fn contains_impl_trait(ty: &Type) -> bool {
    let mut found = false;
    walk(ty, &mut |t| found |= matches!(t, Type::ImplTrait(_)));
    found
}

/// Whether `ty` names `Self` anywhere.
fn mentions_self(ty: &Type) -> bool {
    let mut found = false;
    walk(ty, &mut |t| {
        if let Type::Path(p) = t {
            found |= p.path.segments.iter().any(|s| s.ident == "Self");
        }
    });
    found
}

/// Calls `f` on `ty` and every type inside it.
fn walk(ty: &Type, f: &mut dyn FnMut(&Type)) {
    f(ty);
    match ty {
        Type::Paren(p) => walk(&p.elem, f),
        Type::Group(g) => walk(&g.elem, f),
        Type::Tuple(t) => t.elems.iter().for_each(|e| walk(e, f)),
        Type::Array(a) => walk(&a.elem, f),
        Type::Slice(s) => walk(&s.elem, f),
        Type::Reference(r) => walk(&r.elem, f),
        Type::Path(p) => {
            for seg in &p.path.segments {
                if let syn::PathArguments::AngleBracketed(a) = &seg.arguments {
                    for g in &a.args {
                        if let syn::GenericArgument::Type(t) = g {
                            walk(t, f);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}
