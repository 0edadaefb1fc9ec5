#[global_allocator]
static ALLOCATOR: shoucuo::alloc::LineAligned = shoucuo::alloc::LineAligned;

fn main() {
    if let Err(e) = shoucuo::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
