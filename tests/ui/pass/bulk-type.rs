//! Enums and newtypes derived with `BulkType`, in keys and as `Option`.

use bulk_runtime::{BulkColumn, BulkCreateNew, BulkType, PgEnum, PgType};

#[derive(BulkType, Debug)]
#[bulk(type = "app.state")]
enum State {
    Open,
    InProgress,
    #[bulk(rename = "DONE")]
    Done,
}

#[derive(BulkType, Debug)]
struct UserId(i64);

#[derive(BulkType, Debug)]
struct Name(String);

#[derive(BulkType, Debug)]
struct MaybeNote(Option<String>);

#[derive(BulkCreateNew)]
#[bulk(unique(user, state, name))]
struct Task {
    user: UserId,
    state: State,
    name: Name,
    previous: Option<State>,
    owner: Option<UserId>,
    note: MaybeNote,
}

fn main() {
    assert_eq!(State::LABELS, ["open", "in_progress", "DONE"]);
    assert_eq!(<State as BulkColumn>::PG_TYPE, PgType::Enum("app.state"));
    assert_eq!(<UserId as BulkColumn>::PG_TYPE, PgType::Int8);
    const { assert!(<MaybeNote as BulkColumn>::NULLABLE) };
    let _ = Task::model();
}
