use cachify::cached;

struct Team;

#[cached("report-{id}", tags = ["team:{team}"])]
fn report(team: &Team, id: u64) -> u64 {
    let _ = team;
    id
}

fn main() {}
