use cachify::cached;

#[cached("{first}%20{last}")]
fn full_name(first: &str, last: &str) -> String {
    format!("{first} {last}")
}

fn main() {}
