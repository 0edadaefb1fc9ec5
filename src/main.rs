fn main() {
    if let Err(e) = shoucuo::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
