// An aggregate must name its event enum: the error points at the struct name.
use eventflow::Aggregate;

#[derive(Default, Aggregate)]
#[aggregate(name = "account")]
struct Account {
    balance: u64,
}

fn main() {}
