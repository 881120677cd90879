use cachify::lock;

#[lock("report-{id}", wait = 10)]
fn build_report(id: u64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
