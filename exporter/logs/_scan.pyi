from typing import overload

@overload
def scan_nginx(
    block: bytes | memoryview, max_line: int, /
) -> tuple[int, dict[tuple[bytes, bytes], int], list[bytes]]: ...
@overload
def scan_nginx(
    block: bytes | memoryview, max_line: int, timed: bool, /
) -> tuple[int, dict[tuple[bytes, bytes, bytes], list[int]], list[bytes]]: ...
