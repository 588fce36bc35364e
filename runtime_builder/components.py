"""Optional components of heavy packages: parts a function only has if it imports them.

pyarrow's wheel carries Arrow Flight (an RPC framework, 16.5 MiB), Substrait
bindings, ORC, HDFS/GCS/Azure file systems and Parquet encryption; numpy's
carries numpy.distutils (a build tool) and extension modules that only its own
tests import. A component here is a set of files and the modules that
need them. Each is removed by its own trim rule (``optional:<name>``), unless a
module of it is needed: named by ``--verify-import``, or seen imported by the
function's profile (``wrenpack profile --json``, its ``imported_modules``).

Nothing is taken on trust: the import check then imports every top-level
package and extension module left, and a component something still imports
fails that check, which names the missing module, and the rule is rolled back
for exactly those files (as every trim rule is). A kept component's modules
are imported by the check too, so keeping one is proven as well.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

#: the prefix of every component rule's name (``--disable-rule optional`` turns them all off)
PREFIX = "optional:"


@dataclass(frozen=True)
class Component:
    """Files (``re.match`` on the path inside the runtime, ``/``-separated) and the modules that need them."""

    name: str
    dist: str
    description: str
    modules: tuple[str, ...]
    files: tuple[str, ...]

    @property
    def rule(self) -> str:
        return PREFIX + self.name

    def needed_by(self, imported: Iterable[str]) -> list[str]:
        """The imported modules that need this component (a module of it, or a submodule of one)."""
        return sorted(m for m in imported if any(m == c or m.startswith(c + ".") for c in self.modules))

    def matches(self, rel: str) -> bool:
        rel = rel.replace("\\", "/")
        return any(re.match(p, rel) for p in self.files)


def _pyarrow(name: str, stems: tuple[str, ...], libs: tuple[str, ...] = (), modules: tuple[str, ...] = (),
             description: str = "", extra: tuple[str, ...] = ()) -> Component:
    """A pyarrow component: extension modules ``pyarrow/<stem>.cpython-*.so``, pure-Python modules
    ``pyarrow/<stem>.py`` (and their bytecode), and bundled libraries ``pyarrow/lib<lib>.so*``."""
    files = [rf"pyarrow/{s}\.cpython-[^/]+\.so$" for s in stems]
    files += [rf"pyarrow/(__pycache__/)?{s}\.(py|[^/]*pyc)$" for s in stems]
    files += [rf"pyarrow/lib{lib}\.so(\.\d+)*$" for lib in libs]
    mods = modules or tuple(f"pyarrow.{s}" for s in stems)
    return Component(name, "pyarrow", description, mods, tuple(files) + extra)


COMPONENTS: tuple[Component, ...] = (
    _pyarrow("pyarrow.flight", ("_flight", "flight"), ("arrow_flight", "arrow_python_flight"),
             description="Arrow Flight RPC (pyarrow.flight): libarrow_flight and its bindings"),
    # libarrow_substrait itself stays: pyarrow's core extension (lib.cpython-*.so) links it
    _pyarrow("pyarrow.substrait", ("_substrait", "substrait"),
             description="Substrait query plans (pyarrow.substrait): its bindings"),
    _pyarrow("pyarrow.gandiva", ("gandiva",), ("gandiva",),
             description="Gandiva expression compiler (pyarrow.gandiva)"),
    _pyarrow("pyarrow.parquet.encryption", ("_parquet_encryption", "_dataset_parquet_encryption"),
             ("arrow_python_parquet_encryption",),
             modules=("pyarrow.parquet.encryption", "pyarrow._parquet_encryption",
                      "pyarrow._dataset_parquet_encryption"),
             description="Parquet modular encryption (pyarrow.parquet.encryption)",
             extra=(r"pyarrow/parquet/(__pycache__/)?encryption\.(py|[^/]*pyc)$",)),
    _pyarrow("pyarrow.orc", ("_orc", "_dataset_orc", "orc"), modules=("pyarrow.orc", "pyarrow._orc",
                                                                       "pyarrow._dataset_orc"),
             description="ORC files (pyarrow.orc) and ORC datasets"),
    _pyarrow("pyarrow._hdfs", ("_hdfs",), description="HDFS file system (pyarrow.fs.HadoopFileSystem)"),
    _pyarrow("pyarrow._gcsfs", ("_gcsfs",), description="Google Cloud Storage file system (pyarrow.fs.GcsFileSystem)"),
    _pyarrow("pyarrow._azurefs", ("_azurefs",), description="Azure file system (pyarrow.fs.AzureFileSystem)"),
    _pyarrow("pyarrow._pyarrow_cpp_tests", ("_pyarrow_cpp_tests",), description="pyarrow's C++ test hooks"),
    # (not numpy.f2py: numpy's lazy module attributes import it whenever code walks numpy's names, as
    # scipy.interpolate does, so it would be rolled back in most stacks that could do without it)
    Component("numpy.distutils", "numpy", "numpy.distutils (a build tool, deprecated)", ("numpy.distutils",),
              (r"numpy/distutils/",)),
    Component("numpy-test-modules", "numpy", "extension modules only numpy's own tests import",
              ("numpy._core._simd", "numpy._core._multiarray_tests", "numpy._core._umath_tests",
               "numpy._core._rational_tests", "numpy._core._struct_ufunc_tests", "numpy._core._operand_flag_tests"),
              (r"numpy/_core/_(simd|multiarray_tests|umath_tests|rational_tests|struct_ufunc_tests|"
               r"operand_flag_tests)\.cpython-[^/]+\.so$",)),
)


def by_rule() -> dict[str, Component]:
    return {c.rule: c for c in COMPONENTS}


def split(imported: Iterable[str]) -> tuple[list[Component], dict[str, list[str]]]:
    """(components to trim, {kept component: the imported modules that need it})."""
    seen = sorted(set(imported))
    trim, kept = [], {}
    for c in COMPONENTS:
        need = c.needed_by(seen)
        if need:
            kept[c.name] = need
        else:
            trim.append(c)
    return trim, kept
