fn main() {
    println!("{}", lb_agent::bpf::object().len());
}
