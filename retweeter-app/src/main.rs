//! Placeholder for the retweeter demo application (issue 3).

fn main() {
    println!("retweeter-app: not built yet");
}
