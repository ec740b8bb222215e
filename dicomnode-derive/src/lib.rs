//! `#[derive(Pipeline)]` for dicomnode.
//!
//! The derive implements `dicomnode_server::Pipeline` and checks at compile time what the
//! Python DicomNode checked at run time (or not at all): that every field of the pipeline
//! can be serialized into the child process that runs the processor, and that the named
//! processor belongs to this pipeline. Every problem is reported at the place that causes
//! it, all at once; the macro never panics.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{TokenStream as TokenStream2, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Fields, Path, Type};

/// Derives `Pipeline` for a struct with named fields (or a unit struct).
///
/// Attributes, on the struct:
/// - `#[pipeline(processor = MyProcessor)]` (required): the processor built in the child.
/// - `#[pipeline(inputs = Self::my_inputs)]`: a `fn(&Self) -> Vec<Input>` declaring the
///   inputs; without it, one input `"instances"` takes every instance, enough at once.
/// - `#[pipeline(completion = Self::my_completion)]`: a `fn(&Self) -> Completion` with the
///   grouping (patient, study, series) and the maximum wait; without it, one batch per
///   patient, no maximum wait.
/// - `#[pipeline(crate = some::path)]`: where the dicomnode crate is, if renamed.
///
/// Every other field must be plain data that serde can carry: `Serialize`,
/// `DeserializeOwned`, `Send` and `Sync`. Fields whose type names a lock, cell, atomic,
/// `Rc`/`Weak`, raw pointer, closure or trait object are rejected while the macro expands,
/// so that this is the first error printed, at the field; other fields are checked by
/// the type checker, at the field too. A field marked `#[serde(skip)]` is not sent to the
/// child and not checked; serde rebuilds it with `Default` there.
#[proc_macro_derive(Pipeline, attributes(pipeline))]
pub fn derive_pipeline(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// What `#[pipeline(...)]` on the struct says.
#[derive(Default)]
struct ContainerAttrs {
    processor: Option<Path>,
    inputs: Option<Path>,
    completion: Option<Path>,
    krate: Option<Path>,
}

/// Collects several errors so that the user sees all of them at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

fn parse_container_attrs(input: &DeriveInput, errors: &mut Errors) -> ContainerAttrs {
    let mut attrs = ContainerAttrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("pipeline")) {
        let result = attr.parse_nested_meta(|meta| {
            let slot = if meta.path.is_ident("processor") {
                &mut attrs.processor
            } else if meta.path.is_ident("inputs") {
                &mut attrs.inputs
            } else if meta.path.is_ident("completion") {
                &mut attrs.completion
            } else if meta.path.is_ident("crate") {
                &mut attrs.krate
            } else {
                return Err(meta.error(
                    "unknown pipeline attribute: expected `processor = ...`, `inputs = ...`, `completion = ...` or `crate = ...`",
                ));
            };
            let value: Path = meta.value()?.parse()?;
            if slot.is_some() {
                return Err(meta.error("this pipeline attribute is given twice"));
            }
            *slot = Some(value);
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    attrs
}

/// Whether serde will not serialize this field (so it need not travel to the child).
fn serde_skips(field: &syn::Field) -> bool {
    let mut skip = false;
    let (mut skip_ser, mut skip_de) = (false, false);
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        // Other serde options are serde's business: ignore what we do not look for.
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
            } else if meta.path.is_ident("skip_serializing") {
                skip_ser = true;
            } else if meta.path.is_ident("skip_deserializing") {
                skip_de = true;
            } else if meta.path.is_ident("with")
                || meta.path.is_ident("serialize_with")
                || meta.path.is_ident("deserialize_with")
            {
                // A custom (de)serializer decides; serde checks it.
                skip = true;
            }
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    skip || (skip_ser && skip_de)
}

/// What to do with state that cannot travel, said at the end of each field error.
const ADVICE: &str = "move it into the Processor (built inside the child by `Processor::build`), \
                      or mark the field `#[serde(skip)]` to rebuild it with `Default` in the child";

/// Locks, cells and atomics: serde may serialize some of them, but in state copied to a
/// child they share nothing (each child gets a private copy), and most are not `Sync`.
const PROCESS_LOCAL: &[&str] = &[
    "Mutex",
    "MutexGuard",
    "RwLock",
    "RwLockReadGuard",
    "RwLockWriteGuard",
    "Condvar",
    "Barrier",
    "Cell",
    "RefCell",
    "UnsafeCell",
    "OnceCell",
    "LazyCell",
    "OnceLock",
    "LazyLock",
    "AtomicBool",
    "AtomicU8",
    "AtomicU16",
    "AtomicU32",
    "AtomicU64",
    "AtomicUsize",
    "AtomicI8",
    "AtomicI16",
    "AtomicI32",
    "AtomicI64",
    "AtomicIsize",
];

/// Shared pointers: the sharing cannot cross into another process, and `Rc`/`rc::Weak`
/// are not even `Send`.
const SHARED_POINTERS: &[&str] = &["Rc", "Weak"];

/// Pointers by address: an address means nothing in another process.
const RAW_POINTERS: &[&str] = &["NonNull", "AtomicPtr"];

/// Path segments under which the standard library keeps the types above. A multi-segment
/// path is only recognised if all its leading segments are among these, so that a user's
/// own `grid::Cell` is left to the trait checks; a single name (`Cell`, imported) is taken
/// to be the standard one.
const STD_MODULES: &[&str] = &[
    "std", "core", "alloc", "cell", "rc", "sync", "atomic", "ptr", "lazy",
];

/// The first part of a field's type that can never be pipeline state, with the reason.
///
/// This reads the type's syntax, so it runs while macros expand: its errors are reported
/// before any type checking, and therefore before anything the compiler adds about the
/// same field. Types it does not recognise are left to the trait checks in `__private`.
fn unfit_part(ty: &Type) -> Option<syn::Error> {
    match ty {
        Type::Ptr(_) => Some(syn::Error::new_spanned(
            ty,
            format!(
                "a raw pointer cannot be pipeline state: the pipeline is copied into a new child \
                 process for each patient, where an address means nothing; {ADVICE}"
            ),
        )),
        Type::BareFn(_) | Type::TraitObject(_) | Type::ImplTrait(_) => {
            Some(syn::Error::new_spanned(
                ty,
                "a closure, function or trait object cannot be pipeline state: code cannot be \
             serialized into the child process; move it into the Processor (built inside the \
             child by `Processor::build`), or describe it with data (an enum, a path, a name)",
            ))
        }
        Type::Reference(r) => unfit_part(&r.elem),
        Type::Array(a) => unfit_part(&a.elem),
        Type::Slice(s) => unfit_part(&s.elem),
        Type::Paren(p) => unfit_part(&p.elem),
        Type::Group(g) => unfit_part(&g.elem),
        Type::Tuple(t) => t.elems.iter().find_map(unfit_part),
        Type::Path(p) => {
            if let Some(found) = p.qself.as_ref().and_then(|q| unfit_part(&q.ty)) {
                return Some(found);
            }
            unfit_path(ty, &p.path)
        }
        _ => None,
    }
}

fn unfit_path(ty: &Type, path: &Path) -> Option<syn::Error> {
    let last = path.segments.last()?;
    let name = &last.ident;
    let leading_std = path
        .segments
        .iter()
        .rev()
        .skip(1)
        .all(|s| STD_MODULES.iter().any(|m| s.ident == m));
    if leading_std {
        let is = |names: &[&str]| names.iter().any(|n| name == n);
        if is(PROCESS_LOCAL) {
            return Some(syn::Error::new_spanned(
                ty,
                format!(
                    "`{name}` cannot be pipeline state: the pipeline is copied into a new child \
                     process for each patient, so a lock, cell or atomic here would share \
                     nothing; {ADVICE}"
                ),
            ));
        }
        if is(SHARED_POINTERS) {
            return Some(syn::Error::new_spanned(
                ty,
                format!(
                    "`{name}` cannot be pipeline state: the pipeline is copied into a new child \
                     process for each patient, so a shared pointer here would share nothing; \
                     hold the value itself, or {ADVICE}"
                ),
            ));
        }
        if is(RAW_POINTERS) {
            return Some(syn::Error::new_spanned(
                ty,
                format!(
                    "`{name}` cannot be pipeline state: the pipeline is copied into a new child \
                     process for each patient, where an address means nothing; {ADVICE}"
                ),
            ));
        }
        if name == "PhantomData" {
            // A marker holds no value: `PhantomData<fn() -> T>` is plain data.
            return None;
        }
    }
    path.segments
        .iter()
        .find_map(|segment| match &segment.arguments {
            syn::PathArguments::AngleBracketed(args) => {
                args.args.iter().find_map(|arg| match arg {
                    syn::GenericArgument::Type(ty) => unfit_part(ty),
                    syn::GenericArgument::AssocType(assoc) => unfit_part(&assoc.ty),
                    _ => None,
                })
            }
            _ => None,
        })
}

/// Whether the type mentions one of the struct's type parameters.
fn mentions_any(ty: &Type, params: &[syn::Ident]) -> bool {
    fn walk(tokens: TokenStream2, params: &[syn::Ident]) -> bool {
        tokens.into_iter().any(|tt| match tt {
            TokenTree::Ident(ident) => params.contains(&ident),
            TokenTree::Group(group) => walk(group.stream(), params),
            _ => false,
        })
    }
    walk(ty.to_token_stream(), params)
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let mut errors = Errors::default();
    let attrs = parse_container_attrs(input, &mut errors);
    let name = &input.ident;

    let fields: Vec<&syn::Field> = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named.named.iter().collect(),
            Fields::Unit => Vec::new(),
            Fields::Unnamed(unnamed) => {
                errors.push(syn::Error::new(
                    unnamed.span(),
                    "a Pipeline must be a struct with named fields (or a unit struct): \
                     name the fields of this tuple struct, so that its configuration reads clearly",
                ));
                Vec::new()
            }
        },
        Data::Enum(data) => {
            errors.push(syn::Error::new(
                data.enum_token.span,
                "a Pipeline must be a struct with named fields, not an enum: \
                 keep the variants in a field of a pipeline struct",
            ));
            Vec::new()
        }
        Data::Union(data) => {
            errors.push(syn::Error::new(
                data.union_token.span,
                "a Pipeline must be a struct with named fields, not a union",
            ));
            Vec::new()
        }
    };

    // Errors on fields do not stop the impl from being generated, so that they are not
    // followed by a cascade of "Pipeline is not implemented" errors. A field rejected here
    // gets no trait check below, so that it is reported once.
    let mut field_errors = Errors::default();
    let mut travelling: Vec<&syn::Field> = Vec::new();
    for field in fields.iter().filter(|f| !serde_skips(f)) {
        match unfit_part(&field.ty) {
            Some(error) => field_errors.push(error),
            None => travelling.push(field),
        }
    }

    if attrs.processor.is_none() {
        errors.push(syn::Error::new(
            name.span(),
            "missing `#[pipeline(processor = ...)]`: name the Processor that runs for each patient, \
             e.g. `#[pipeline(processor = MyProcessor)]`",
        ));
    }

    let krate = attrs
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::dicomnode_server));
    let private = quote!(#krate::__private);

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let type_params: Vec<syn::Ident> = input
        .generics
        .type_params()
        .map(|p| p.ident.clone())
        .collect();

    // One assertion per field that must travel, spanned at its type so that the error
    // underlines the offending field. Emitted before anything else that type-checks, so
    // that with `#[derive(Pipeline, Serialize, Deserialize)]` its message comes before
    // serde's. Fields of a generic type are checked where the pipeline is used, through
    // the `Self: Serialize + DeserializeOwned + Send + Sync` bound below.
    let mut unchecked: Vec<syn::Ident> = input
        .generics
        .params
        .iter()
        .map(|param| match param {
            syn::GenericParam::Type(p) => p.ident.clone(),
            syn::GenericParam::Const(p) => p.ident.clone(),
            syn::GenericParam::Lifetime(p) => p.lifetime.ident.clone(),
        })
        .collect();
    // Checked outside the struct's scope, where `Self` means nothing.
    unchecked.push(syn::Ident::new("Self", proc_macro2::Span::call_site()));
    let field_checks: Vec<TokenStream2> = travelling
        .iter()
        .filter(|f| !mentions_any(&f.ty, &unchecked))
        .map(|f| {
            let ty = &f.ty;
            quote_spanned!(ty.span()=> #private::assert_pipeline_field::<#ty>();)
        })
        .collect();

    let processor = match (errors.finish(), attrs.processor) {
        (Ok(()), Some(processor)) => processor,
        (result, _) => {
            // Report the attribute errors together with the field errors, all at once.
            let mut tokens = result
                .err()
                .map(|e| e.to_compile_error())
                .unwrap_or_default();
            if let Err(e) = field_errors.finish() {
                tokens.extend(e.to_compile_error());
            }
            tokens.extend(quote!(const _: () = { #(#field_checks)* };));
            return Ok(tokens);
        }
    };
    // Through `ProcessorOf` rather than naming the processor directly, so that a processor
    // of another pipeline, or a type that is no processor, is reported with its own message
    // at the attribute instead of as a type mismatch.
    let processor_type = quote_spanned!(processor.span()=>
        <#processor as #private::ProcessorOf<Self>>::Processor
    );

    let inputs_body = match &attrs.inputs {
        Some(path) => quote_spanned!(path.span()=> #path(self)),
        None => quote!(#private::default_inputs()),
    };
    let completion_fn = attrs.completion.as_ref().map(|path| {
        quote_spanned!(path.span()=>
            fn completion(&self) -> #krate::Completion {
                #path(self)
            }
        )
    });

    let mut bounds = where_clause.cloned().unwrap_or_else(|| syn::WhereClause {
        where_token: Default::default(),
        predicates: Default::default(),
    });
    if !type_params.is_empty() {
        bounds.predicates.push(syn::parse_quote!(
            Self: #private::Serialize + #private::DeserializeOwned + ::core::marker::Send + ::core::marker::Sync + 'static
        ));
    }

    let field_errors = field_errors
        .finish()
        .err()
        .map(|e| e.to_compile_error())
        .unwrap_or_default();

    Ok(quote! {
        #field_errors

        // Type-checked (not evaluated beyond empty calls), which is all the checks need.
        const _: () = { #(#field_checks)* };

        impl #impl_generics #krate::Pipeline for #name #ty_generics #bounds {
            type Processor = #processor_type;

            fn inputs(&self) -> ::std::vec::Vec<#krate::Input> {
                #inputs_body
            }

            #completion_fn
        }
    })
}
