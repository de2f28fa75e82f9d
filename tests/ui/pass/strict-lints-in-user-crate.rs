//! A user's crate with strict lints: the generated code adds no warning.
#![forbid(unsafe_code)]
#![deny(warnings)]
#![deny(
    missing_docs,
    missing_debug_implementations,
    missing_copy_implementations,
    unreachable_pub,
    unused_qualifications,
    unused_results,
    unused_lifetimes,
    single_use_lifetimes,
    trivial_casts,
    trivial_numeric_casts,
    elided_lifetimes_in_paths,
    non_ascii_idents,
    unused_extern_crates,
    let_underscore_drop,
    meta_variable_misuse,
    redundant_lifetimes,
    unit_bindings,
    unnameable_types,
    variant_size_differences,
    keyword_idents,
    macro_use_extern_crate,
    absolute_paths_not_starting_with_crate
)]

/// The models.
pub mod models {
    use bulk_runtime::{BulkCreateNew, BulkType};

    /// A retweet.
    #[derive(BulkCreateNew, Debug, Clone, Copy)]
    #[bulk(table = "retweeter", unique(tweet, retweeter))]
    pub struct Retweet {
        /// The tweet.
        pub tweet: i64,
        /// Who retweeted it.
        #[bulk(index)]
        pub retweeter: i64,
        /// Whose tweet it is.
        pub original_author: Option<i64>,
    }

    /// A borrowed row.
    #[derive(BulkCreateNew, Debug)]
    #[bulk(unique(name))]
    pub struct Named<'a> {
        /// The name.
        pub name: &'a str,
        /// The note.
        pub note: Option<std::borrow::Cow<'a, str>>,
    }

    /// A mood.
    #[derive(BulkType, Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mood {
        /// Happy.
        Happy,
        /// So-so.
        #[bulk(rename = "so-so")]
        SoSo,
    }

    /// An id.
    #[derive(BulkType, Debug, Clone, Copy, PartialEq, Eq)]
    pub struct UserId(pub i64);

    /// A feeling.
    #[derive(BulkCreateNew, Debug, Clone, Copy)]
    #[bulk(unique(person, mood))]
    pub struct Feeling {
        /// Who.
        pub person: UserId,
        /// How.
        pub mood: Mood,
    }
}

fn main() {
    use bulk_runtime::BulkCreateNew;
    let _columns = models::Retweet::columns();
    let _model = models::Feeling::model();
}
