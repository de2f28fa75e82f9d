use bulk_runtime::BulkType;

// The wrapped type must itself be a supported column type.
#[derive(BulkType, Debug)]
struct Count(u64);

fn main() {}
