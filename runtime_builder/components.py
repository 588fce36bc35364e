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
    #: distributions without which the component cannot import at all: it is trimmed only when none of them
    #: is in the runtime (then it would fail to import either way, with the same message where the package
    #: checks for the dependency first)
    unless_installed: tuple[str, ...] = ()

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
    # pyarrow's core extension and libarrow_python list libarrow_substrait (and libarrow_dataset) as
    # DT_NEEDED without binding a symbol to them: ``libdeps`` drops those entries, or keeps the library
    _pyarrow("pyarrow.substrait", ("_substrait", "substrait"), ("arrow_substrait",),
             description="Substrait query plans (pyarrow.substrait): libarrow_substrait and its bindings"),
    # Datasets: pyarrow.parquet.read_table falls back to ParquetFile without them (no filters=, no
    # partitioned directories; pandas' read_parquet/to_parquet of a file work). libarrow_acero stays:
    # libarrow_python binds libstdc++ pieces it carries. libarrow_substrait needs libarrow_dataset, so
    # substrait's modules keep this component too.
    _pyarrow("pyarrow.dataset", ("_dataset", "_dataset_parquet", "dataset", "_acero", "acero"), ("arrow_dataset",),
             modules=("pyarrow.dataset", "pyarrow._dataset", "pyarrow._dataset_parquet", "pyarrow.acero",
                      "pyarrow._acero", "pyarrow.substrait", "pyarrow._substrait", "pyarrow._dataset_orc",
                      "pyarrow._dataset_parquet_encryption"),
             description="Arrow datasets and Acero plans (pyarrow.dataset, pyarrow.acero): libarrow_dataset and "
                         "their bindings"),
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
    # pandas' parts that import a dependency pandas does not install: without it they cannot import, and
    # pandas checks for it first (DataFrame.style: "requires jinja2"; plotting: "matplotlib is required")
    Component("pandas.io.formats.style", "pandas", "DataFrame.style (pandas.io.formats.style): needs jinja2",
              ("pandas.io.formats.style", "pandas.io.formats.style_render"),
              (r"pandas/io/formats/(__pycache__/)?style(_render)?\.(py|[^/]*pyc)$", r"pandas/io/formats/templates/"),
              unless_installed=("jinja2",)),
    Component("pandas.plotting._matplotlib", "pandas", "pandas' matplotlib plotting backend: needs matplotlib",
              ("pandas.plotting._matplotlib",), (r"pandas/plotting/_matplotlib/",), unless_installed=("matplotlib",)),
    Component("pandas.io.sas", "pandas", "SAS files (pandas.read_sas): its readers and extension modules",
              ("pandas.io.sas.sas7bdat", "pandas.io.sas.sas_xport", "pandas.io.sas.sas_constants", "pandas._libs.sas",
               "pandas._libs.byteswap"),
              (r"pandas/io/sas/(__pycache__/)?(sas7bdat|sas_xport|sas_constants)\.(py|[^/]*pyc)$",
               r"pandas/_libs/(sas|byteswap)\.cpython-[^/]+\.so$")),
    # (Lambda has no display, clipboard tool or Qt: pyperclip's backends all fail there)
    Component("pandas.io.clipboard", "pandas", "the clipboard (pandas.read_clipboard, DataFrame.to_clipboard)",
              ("pandas.io.clipboard",), (r"pandas/io/clipboard/",)),
    Component("numpy-test-modules", "numpy", "extension modules only numpy's own tests import",
              ("numpy._core._simd", "numpy._core._multiarray_tests", "numpy._core._umath_tests",
               "numpy._core._rational_tests", "numpy._core._struct_ufunc_tests", "numpy._core._operand_flag_tests"),
              (r"numpy/_core/_(simd|multiarray_tests|umath_tests|rational_tests|struct_ufunc_tests|"
               r"operand_flag_tests)\.cpython-[^/]+\.so$",)),
)


def by_rule() -> dict[str, Component]:
    return {c.rule: c for c in COMPONENTS}


def split(imported: Iterable[str], installed: Iterable[str] = ()) -> tuple[list[Component], dict[str, list[str]]]:
    """(components to trim, {kept component: the imported modules that need it}). ``installed``: the
    runtime's distributions; a component whose dependency is among them is kept with its own modules as
    the ones needing it, so the import check proves it imports with that dependency."""
    seen = sorted(set(imported))
    present = {_canonical(d) for d in installed}
    trim, kept = [], {}
    for c in COMPONENTS:
        need = c.needed_by(seen)
        with_ = sorted(d for d in c.unless_installed if _canonical(d) in present)
        if need or with_:
            kept[c.name] = need or list(c.modules)
        else:
            trim.append(c)
    return trim, kept


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
