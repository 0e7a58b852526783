"""Low-level helpers for the kernels: explicit SIMD vectors and borrowed
array views.

SIMD: a Numba value type holding one machine vector of float32 or float64, and
the four operations the pre-activation GEMM needs (load, store, broadcast,
fused multiply-add).

Why: LLVM's auto-vectoriser keeps GEMM accumulators in memory (it cannot prove
that Numba's array arguments do not alias), so every multiply-add also loads
and stores its accumulator; it reached ~45% of an AVX-512 core's FMA peak.
Vectors held in local variables live in registers across the whole reduction
(~85% in a microbenchmark on the same core).

A vector is VEC_BYTES wide: 64 (one zmm register) where the compile target
has AVX-512F, else 32 (ymm). The kernels' register tiles are sized in
vectors, so they fit the 32 registers of AVX-512 and the 16 of AVX2 alike.
The width changes speed only: each lane runs the same correctly rounded fma
in the same order, so results are identical for any width.

Borrowed views: Numba counts references to every array it passes or copies,
with an atomic instruction on the array's allocation record. In the cell loops
that was a quarter of the run time, and with two threads both cores bounced
the records of the shared arrays (x, weights, out) between their caches.
borrow(a) is a view of a without an allocation record, so reference counting
skips it; it must not outlive a, which its caller keeps alive (an argument of
the caller, or a variable used after the loop, see keep_alive).

Under NUMBA_DISABLE_JIT=1 (the coverage run, which exercises the kernels'
Python logic) the same names are plain NumPy functions; their fma rounds twice.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


def _target_has_avx512():
    """Whether code compiled now may use AVX-512F registers: NUMBA_CPU_FEATURES
    (or NUMBA_CPU_NAME=generic/host) when set, else the host's features."""
    features = numba.config.CPU_FEATURES
    if not features:
        if numba.config.CPU_NAME not in (None, "host"):
            return False  # a named portable target: assume no AVX-512
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


VEC_BYTES = 64 if _target_has_avx512() else 32


class Vec(types.Type):
    """One SIMD vector of VEC_BYTES // itemsize lanes of a float dtype."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VEC_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vec({dtype}x{self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = ir.FloatType() if fe_type.dtype == types.float32 else ir.DoubleType()
        super().__init__(dmm, fe_type, ir.VectorType(elt, fe_type.lanes))


def _element_pointer(context, builder, aryty, ary, index):
    """Address of element `index` of a C-contiguous array in flat order."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [index], inbounds=True)


def _check_array(arr):
    if not (isinstance(arr, types.Array) and arr.layout == "C"
            and arr.dtype in (types.float32, types.float64)):
        raise numba.core.errors.TypingError(
            f"SIMD access needs a C-contiguous float array, got {arr}")


@intrinsic
def vload(typingctx, arr, index):
    """The vector arr.flat[index : index + lanes] (unaligned load)."""
    _check_array(arr)
    vec = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        vty = context.get_value_type(sig.return_type)
        return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=arr.dtype.bitwidth // 8)

    return vec(arr, index), codegen


@intrinsic
def vstore(typingctx, arr, index, value):
    """arr.flat[index : index + lanes] = value."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, args[2].type.as_pointer()),
                      align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(arr, index, value), codegen


@intrinsic
def vstore_stream(typingctx, arr, index, value):
    """arr.flat[index : index + lanes] = value with a non-temporal store (it
    bypasses the caches and needs no read of the line first), for data read
    back much later. The address must be VEC_BYTES-aligned. Weakly ordered:
    store_fence() before anything else may read it."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        store = builder.store(args[2], builder.bitcast(ptr, args[2].type.as_pointer()),
                              align=VEC_BYTES)
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(arr, index, value), codegen


@intrinsic
def store_fence(typingctx):
    """A full fence (mfence on x86): the non-temporal stores before it are
    ordered before every later load and store (and visible to other threads
    once they synchronise)."""

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def vsplat(typingctx, x):
    """A vector with every lane equal to the scalar x."""
    vec = Vec(x)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(sig.return_type)
        one = builder.insert_element(ir.Constant(vty, ir.Undefined), args[0],
                                     ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
        return builder.shuffle_vector(one, one, zeros)

    return vec(x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c per lane with one rounding (llvm.fma)."""

    def codegen(context, builder, sig, args):
        vty = args[0].type
        suffix = "f32" if isinstance(vty.element, ir.FloatType) else "f64"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{vty.count}{suffix}")
        return builder.call(fn, args)

    return c(a, b, c), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask for the cache line holding arr.flat[index] of a C-contiguous array,
    or arr[index] of a 1-D one of any layout (llvm.prefetch, read, keep in
    all levels); never faults, changes nothing but timing."""
    if not (isinstance(arr, types.Array) and (arr.layout == "C" or arr.ndim == 1)):
        return None

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        if aryty.layout == "C":
            ptr = _element_pointer(context, builder, aryty, args[0], args[1])
        else:
            ary = context.make_array(aryty)(context, builder, args[0])
            stride = cgutils.unpack_tuple(builder, ary.strides, 1)[0]
            base = builder.ptrtoint(ary.data, stride.type)
            ptr = builder.inttoptr(builder.add(base, builder.mul(args[1], stride)),
                                   ary.data.type)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@intrinsic
def borrow(typingctx, arr):
    """arr without its allocation record (see the module docstring)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return arr(arr), codegen


@intrinsic
def keep_alive(typingctx, arr):
    """A use of arr that does nothing: Numba frees an array after its last use,
    so an owner whose borrowed views are still in use is passed here after them."""

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return types.void(arr), codegen


if numba.config.DISABLE_JIT:  # plain-Python stand-ins (see the module docstring)
    def vload(arr, index):  # noqa: F811
        lanes = VEC_BYTES // arr.itemsize
        return arr.reshape(-1)[index:index + lanes].copy()

    def vstore(arr, index, value):  # noqa: F811
        arr.reshape(-1)[index:index + value.size] = value

    def vstore_stream(arr, index, value):  # noqa: F811
        vstore(arr, index, value)

    def store_fence():  # noqa: F811
        return None

    def vsplat(x):  # noqa: F811
        return np.full(VEC_BYTES // np.dtype(type(x)).itemsize, x)

    def vfma(a, b, c):  # noqa: F811
        return a * b + c

    def prefetch(arr, index):  # noqa: F811
        return None

    def borrow(arr):  # noqa: F811
        return arr

    def keep_alive(arr):  # noqa: F811
        return None
