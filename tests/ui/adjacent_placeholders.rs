use cachify::cached;

#[cached("pair-{a}{b}")]
fn pair(a: u32, b: u32) -> u32 {
    a + b
}

fn main() {}
