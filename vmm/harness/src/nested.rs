pub fn run(
    _: &std::path::Path,
    _: &std::path::Path,
    _: &std::path::Path,
    _: &std::path::Path,
    _: &std::path::Path,
    r: &mut crate::Report,
) {
    r.check("nested", Err(anyhow::anyhow!("not implemented")))
}
