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
/// - `#[pipeline(crate = some::path)]`: where the dicomnode crate is, if renamed.
///
/// A field marked `#[serde(skip)]` is not sent to the child; serde rebuilds it with
/// `Default` there.
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
            } else if meta.path.is_ident("crate") {
                &mut attrs.krate
            } else {
                return Err(meta.error(
                    "unknown pipeline attribute: expected `processor = ...`, `inputs = ...` or `crate = ...`",
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

/// Types that serde can serialize but that make no sense in state copied to a child: a lock
/// or a cell shares nothing across processes, each child would get a private copy.
const PROCESS_LOCAL: &[&str] = &[
    "Mutex",
    "RwLock",
    "Condvar",
    "Cell",
    "RefCell",
    "OnceCell",
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

/// Whether `ty` holds a closure, function pointer or trait object, which can never be
/// deserialized in another process.
fn code_type(ty: &Type) -> Option<proc_macro2::Span> {
    fn walk(tokens: TokenStream2) -> Option<proc_macro2::Span> {
        tokens.into_iter().find_map(|tt| match tt {
            TokenTree::Ident(ident) if ident == "dyn" || ident == "fn" || ident == "impl" => {
                Some(ident.span())
            }
            TokenTree::Group(group) => walk(group.stream()),
            _ => None,
        })
    }
    walk(ty.to_token_stream())
}

/// The first process-local type named in `ty`, if any.
fn process_local_type(ty: &Type) -> Option<syn::Ident> {
    fn walk(tokens: TokenStream2) -> Option<syn::Ident> {
        tokens.into_iter().find_map(|tt| match tt {
            TokenTree::Ident(ident) if PROCESS_LOCAL.iter().any(|name| ident == name) => {
                Some(ident)
            }
            TokenTree::Group(group) => walk(group.stream()),
            _ => None,
        })
    }
    walk(ty.to_token_stream())
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
    // followed by a cascade of "Pipeline is not implemented" errors.
    let mut field_errors = Errors::default();
    for field in fields.iter().filter(|f| !serde_skips(f)) {
        if let Some(ident) = process_local_type(&field.ty) {
            field_errors.push(syn::Error::new(
                ident.span(),
                format!(
                    "`{ident}` cannot be pipeline state: the pipeline is copied into a new child \
                     process for each patient, so a lock, cell or atomic here would share nothing; \
                     move it into the Processor (built inside the child by `Processor::build`), \
                     or mark the field `#[serde(skip)]` to rebuild it with `Default` in the child"
                ),
            ));
        }
    }

    for field in fields.iter().filter(|f| !serde_skips(f)) {
        if let Some(span) = code_type(&field.ty) {
            field_errors.push(syn::Error::new(
                span,
                "a closure, function or trait object cannot be pipeline state: code cannot be \
                 serialized into the child process; move it into the Processor (built inside the \
                 child by `Processor::build`), or describe it with data (an enum, a path, a name)",
            ));
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
    // underlines the offending field. Fields of a generic type are checked where the
    // pipeline is used, through the `Self: Serialize + DeserializeOwned` bound below.
    let field_checks: Vec<TokenStream2> = fields
        .iter()
        .filter(|f| !serde_skips(f) && !mentions_any(&f.ty, &type_params))
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
            if type_params.is_empty() {
                tokens.extend(quote!(const _: () = { #(#field_checks)* };));
            }
            return Ok(tokens);
        }
    };
    let processor_check = quote_spanned!(processor.span()=>
        #private::assert_processor_of::<#processor, Self>();
    );

    let inputs_body = match &attrs.inputs {
        Some(path) => quote_spanned!(path.span()=> #path(self)),
        None => quote!(#private::default_inputs()),
    };

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

        impl #impl_generics #krate::Pipeline for #name #ty_generics #bounds {
            type Processor = #processor;

            fn inputs(&self) -> ::std::vec::Vec<#krate::Input> {
                #inputs_body
            }
        }

        // Type-checked (not evaluated) by the compiler, which is all the checks need.
        impl #impl_generics #name #ty_generics #bounds {
            #[doc(hidden)]
            #[allow(dead_code)]
            const __DICOMNODE_PIPELINE_CHECKS: () = {
                #(#field_checks)*
                #processor_check
            };
        }

    })
}
