//! The bare Pingora baseline with the sidecar's allocator (jemalloc), so the
//! benchmark can tell the allocator's gain from the sidecar's own cost.
//! Usage: bare_proxy_jemalloc LISTEN_ADDR UPSTREAM_ADDR

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "bare_proxy.rs"]
mod bare_proxy;

fn main() {
    bare_proxy::main();
}
