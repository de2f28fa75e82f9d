//! Models in nested modules with restricted visibility, two models on one
//! table, and a struct with a where clause and bounded lifetimes.
#![allow(dead_code)]

mod outer {
    pub(crate) mod inner {
        use bulk_runtime::BulkCreateNew;

        #[derive(BulkCreateNew)]
        #[bulk(table = "shared", unique(k))]
        pub(crate) struct Full {
            pub(crate) k: i64,
            pub(crate) a: Option<String>,
        }

        #[derive(BulkCreateNew)]
        #[bulk(table = "shared", unique(k))]
        pub(super) struct Part {
            k: i64,
        }

        #[derive(BulkCreateNew)]
        #[bulk(unique(a))]
        struct Bounded<'a, 'b: 'a>
        where
            'b: 'a,
        {
            a: &'a str,
            b: std::borrow::Cow<'b, [u8]>,
            c: Option<&'b [u8]>,
        }

        pub(crate) fn check() {
            assert_eq!(Part::model().table(), "shared");
            assert_eq!(Bounded::model().columns().len(), 3);
        }
    }
}

fn main() {
    use bulk_runtime::BulkCreateNew;
    outer::inner::check();
    assert_eq!(outer::inner::Full::model().table(), "shared");
    let _ = outer::inner::Full::columns().a;
}
