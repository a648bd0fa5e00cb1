fn main() {
    cpkfs::cli::main()
}
