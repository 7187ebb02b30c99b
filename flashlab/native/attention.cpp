// flashlab.torch's launch path in C++: the per-call work of a prepared call (flashlab.launch.
// prepared.Prepared) without Python, and an autograd node torch's engine runs without the GIL.
//
// Python prepares a call once per shape and layout (compiles the kernels with CuPy, resolves the
// plan, packs the constant arguments) and hands it over here as a Plan: per launch, the CUDA
// function handle, grid, block, shared memory, which buffer goes in each pointer argument, and
// the constants' bytes. A call then allocates its outputs with torch's allocator (at::empty:
// CUDA-graph safe), fills the buffer addresses into a copy of each launch's argument block and
// launches with the driver's cuLaunchKernel on torch's current stream. Nothing here compiles,
// plans or checks shapes: flashlab.torch has done that before a plan exists.
//
// Buffers, by index: forward q k v o lse; backward do q k v o lse dq dk dv, then the workspace
// parts (Dvec, dq_acc) as the workspace's address plus each part's offset.
#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// the driver's cuLaunchKernel, cuCtxGetCurrent and cuCtxSetCurrent (CUfunction, CUstream and
// CUcontext as void*); their addresses come from Python (flashlab.native.driver_addresses)
typedef int (*LaunchFn)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                        unsigned, void*, void**, void**);
typedef int (*CtxGetFn)(void**);
typedef int (*CtxSetFn)(void*);
LaunchFn launch_kernel = nullptr;
CtxGetFn ctx_get = nullptr;
CtxSetFn ctx_set = nullptr;

constexpr int kMaxArgs = 48;       // arguments of one launch
constexpr int kMaxBlob = 1024;     // bytes of one launch's argument block
constexpr int kMaxBuffers = 16;    // buffers of one call

struct Step {
    void* func;
    unsigned grid[3], block[3], smem;
    std::vector<int> slots;        // buffer index of each leading pointer argument
    std::vector<int> offsets;      // byte offset of every argument in `blob`
    std::vector<char> blob;        // the arguments: one 8-byte cell per slot, then the constants
};

struct Plan {
    std::vector<Step> steps;
    std::vector<int64_t> parts;    // workspace parts' byte offsets (buffers after the named ones)
    int64_t workspace = 0;         // bytes
    std::vector<int64_t> do_strides;  // the backward's dO layout (element strides); others copied
    void* context = nullptr;       // the CUDA context the kernels were loaded in (the primary one)
    std::string describe;
};

// keeps the backward's plan alive in the autograd node (saved_data holds IValues: a capsule)
struct PlanRef : torch::CustomClassHolder {
    explicit PlanRef(std::shared_ptr<Plan> p) : plan(std::move(p)) {}
    std::shared_ptr<Plan> plan;
};

void* current_stream(const Tensor& t) {
    if (!t.is_cuda()) return nullptr;  // tests/test_native.py runs plans on CPU tensors
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    return impl.getStream(t.device()).native_handle();
}

void run(const Plan& plan, const int64_t* buffers, void* stream) {
    // torch's autograd engine runs a backward on its own thread, where no CUDA context may be
    // current yet (torch's runtime calls make one current lazily; a driver launch needs it)
    if (plan.context != nullptr) {
        void* current = nullptr;
        if (ctx_get(&current) != 0 || current != plan.context) ctx_set(plan.context);
    }
    for (const Step& s : plan.steps) {
        char blob[kMaxBlob];
        void* args[kMaxArgs];
        std::memcpy(blob, s.blob.data(), s.blob.size());
        for (size_t i = 0; i < s.slots.size(); ++i)
            std::memcpy(blob + s.offsets[i], &buffers[s.slots[i]], 8);
        for (size_t i = 0; i < s.offsets.size(); ++i) args[i] = blob + s.offsets[i];
        const int rc = launch_kernel(s.func, s.grid[0], s.grid[1], s.grid[2], s.block[0],
                                     s.block[1], s.block[2], s.smem, stream, args, nullptr);
        if (rc != 0)
            throw std::runtime_error("flashlab: kernel launch failed (CUresult " +
                                     std::to_string(rc) + ") for " + plan.describe);
    }
}

// o, or a gradient, laid out like x: contiguous for a contiguous x, else heads inside rows
// ((B, N, H, d) in memory), as flashlab.torch._out_like decides
Tensor like(const Tensor& x) {
    if (x.is_contiguous()) return at::empty(x.sizes(), x.options());
    const int64_t H = x.size(1), N = x.size(2), d = x.size(3);
    return at::empty_strided(x.sizes(), {N * H * d, d, H * d, 1}, x.options());
}

int64_t address(const Tensor& t) { return reinterpret_cast<int64_t>(t.data_ptr()); }

std::vector<Tensor> forward_call(const Plan& plan, const Tensor& q, const Tensor& k,
                                 const Tensor& v) {
    c10::DeviceGuard guard(q.device());
    Tensor o = like(q);
    Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
    const int64_t bufs[5] = {address(q), address(k), address(v), address(o), address(lse)};
    run(plan, bufs, current_stream(q));
    return {o, lse};
}

std::vector<Tensor> backward_call(const Plan& plan, Tensor dO, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& o, const Tensor& lse) {
    c10::DeviceGuard guard(q.device());
    if (dO.strides() != c10::IntArrayRef(plan.do_strides) || address(dO) % 16 != 0) {
        Tensor copy = at::empty_strided(dO.sizes(), plan.do_strides, dO.options());
        copy.copy_(dO);  // another layout than the call was prepared for: into that one
        dO = copy;
    }
    Tensor dq = like(q), dk = like(k), dv = like(v);
    Tensor work = at::empty({plan.workspace}, q.options().dtype(at::kByte));
    int64_t bufs[kMaxBuffers] = {address(dO), address(q),  address(k),  address(v),
                                 address(o),  address(lse), address(dq), address(dk),
                                 address(dv)};
    const int64_t base = address(work);
    for (size_t i = 0; i < plan.parts.size(); ++i) bufs[9 + i] = base + plan.parts[i];
    run(plan, bufs, current_stream(q));
    return {dq, dk, dv};
}

struct Attention : public torch::autograd::Function<Attention> {
    static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k,
                          const Tensor& v, const std::shared_ptr<Plan>& fwd,
                          const std::shared_ptr<Plan>& bwd) {
        auto out = forward_call(*fwd, q, k, v);
        ctx->save_for_backward({q, k, v, out[0], out[1]});
        ctx->saved_data["bwd"] = c10::IValue::make_capsule(c10::make_intrusive<PlanRef>(bwd));
        return out[0];
    }

    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        auto saved = ctx->get_saved_variables();
        auto ref = c10::static_intrusive_pointer_cast<PlanRef>(ctx->saved_data["bwd"].toCapsule());
        auto g = backward_call(*ref->plan, grads[0], saved[0], saved[1], saved[2], saved[3],
                               saved[4]);
        return {g[0], g[1], g[2], Tensor(), Tensor()};
    }
};

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const std::shared_ptr<Plan>& fwd, const std::shared_ptr<Plan>& bwd) {
    return Attention::apply(q, k, v, fwd, bwd);
}

// A plan from Python: steps as (function handle, grid, block, smem, slots, constants' bytes)
std::shared_ptr<Plan> make_plan(const std::vector<int64_t>& driver, const std::vector<py::tuple>& steps,
                                const std::vector<int64_t>& parts, int64_t workspace,
                                const std::vector<int64_t>& do_strides, int64_t context,
                                const std::string& describe) {
    if (driver.size() != 3) throw std::runtime_error("flashlab native: three driver addresses");
    auto plan = std::make_shared<Plan>();
    for (const py::tuple& t : steps) {
        Step s;
        s.func = reinterpret_cast<void*>(t[0].cast<int64_t>());
        auto grid = t[1].cast<std::vector<unsigned>>(), block = t[2].cast<std::vector<unsigned>>();
        for (int i = 0; i < 3; ++i) {
            s.grid[i] = i < (int)grid.size() ? grid[i] : 1;
            s.block[i] = i < (int)block.size() ? block[i] : 1;
        }
        s.smem = t[3].cast<unsigned>();
        s.slots = t[4].cast<std::vector<int>>();
        auto consts = t[5].cast<std::vector<std::string>>();
        for (int slot : s.slots) {
            if (slot < 0 || slot >= kMaxBuffers) throw std::runtime_error("flashlab native: bad slot");
            s.offsets.push_back((int)s.blob.size());
            s.blob.resize(s.blob.size() + 8);
        }
        for (const std::string& c : consts) {
            const size_t align = c.size() >= 8 ? 8 : c.size();  // as the kernel's parameter does
            s.blob.resize((s.blob.size() + align - 1) / align * align);
            s.offsets.push_back((int)s.blob.size());
            s.blob.insert(s.blob.end(), c.begin(), c.end());
        }
        if ((int)s.offsets.size() > kMaxArgs || (int)s.blob.size() > kMaxBlob)
            throw std::runtime_error("flashlab native: a launch with too many arguments");
        plan->steps.push_back(std::move(s));
    }
    if (9 + parts.size() > (size_t)kMaxBuffers)
        throw std::runtime_error("flashlab native: too many workspace parts");
    plan->parts = parts;
    plan->workspace = workspace;
    plan->do_strides = do_strides;
    plan->describe = describe;
    plan->context = reinterpret_cast<void*>(context);
    launch_kernel = reinterpret_cast<LaunchFn>(driver[0]);
    ctx_get = reinterpret_cast<CtxGetFn>(driver[1]);
    ctx_set = reinterpret_cast<CtxSetFn>(driver[2]);
    return plan;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    py::class_<Plan, std::shared_ptr<Plan>>(m, "Plan")
        .def_readonly("describe", &Plan::describe)
        .def_readonly("workspace", &Plan::workspace);
    m.def("plan", &make_plan, "a prepared call: (the driver functions' addresses, steps, "
          "workspace parts' offsets, workspace bytes, dO's strides, context, description)");
    m.def("attention", &attention, "o of q, k, v through plans fwd and bwd (autograd)");
    m.def("forward", [](const std::shared_ptr<Plan>& fwd, const Tensor& q, const Tensor& k,
                        const Tensor& v) { return forward_call(*fwd, q, k, v); },
          "(o, lse) through plan fwd, outside autograd");
    m.def("backward", [](const std::shared_ptr<Plan>& bwd, const Tensor& dO, const Tensor& q,
                         const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse) {
        return backward_call(*bwd, dO, q, k, v, o, lse);
    }, "(dq, dk, dv) through plan bwd, outside autograd");
}
