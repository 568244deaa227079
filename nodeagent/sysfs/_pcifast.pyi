# Type stub for the compiled accelerator (_pcifast.c).

def read_functions(
    bus_fd: int, addresses: list[str], /
) -> list[
    tuple[bytes, str | None, bytes | None, bytes | None, bytes | None, bytes | None, str | None] | None
]: ...
