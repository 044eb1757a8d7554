//! The native policy groups compiled to regorus's bytecode VM (RVM): a way
//! into issue 22 that was measured and is not used by the server.
//!
//! On the bundled set it evaluates a Pod about 3× faster than the grouped
//! interpreter (benches/README.md), but regorus 0.14.1's VM takes an
//! assignment of an undefined value (`x := input.missing`) for success
//! where Rego, OPA and regorus's interpreter fail the body. A policy
//! written `some c in containers; t := c.field; not t in allowed` then
//! finds violations that are not there, and a `not` over a helper built
//! that way flips: the differential test found a Pod whose
//! `seccomp_profile` violation the VM lost, a silent allow. The test below
//! pins the fault; when it fails, regorus has changed, and the VM can be
//! tried again behind the differential test
//! (`webhook/tests/grouped_evaluation.rs`) with [`PolicySet::with_bytecode`].
//!
//! [`PolicySet::with_bytecode`]: super::PolicySet::with_bytecode

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::rvm::program::Program;
use regorus::{Engine, Value};

/// The VM stops a program after this many instructions (its default,
/// 25,000, is too few for the Pod Security group on a large Pod).
const MAX_INSTRUCTIONS: usize = 5_000_000;

/// A group's rule compiled for the VM, with the data document it reads.
#[derive(Clone)]
pub(super) struct GroupProgram {
    program: Arc<Program>,
    data: Value,
}

impl GroupProgram {
    /// Compiles `rule` (a group's `data.tollgate_aggregate.g<N>.results`)
    /// from the prepared `engine`, or says why it cannot run on the VM
    /// (the VM has no `with`, and no builtins added with `add_extension`).
    pub(super) fn compile(engine: &Engine, rule: &str) -> Result<GroupProgram, String> {
        let mut engine = engine.clone();
        let compiled = engine
            .compile_with_entrypoint(&rule.into())
            .map_err(|e| e.to_string())?;
        let program =
            Compiler::compile_from_policy(&compiled, &[rule]).map_err(|e| e.to_string())?;
        Ok(GroupProgram {
            program,
            data: engine.get_data(),
        })
    }

    /// A VM with this program loaded, for one thread.
    pub(super) fn vm(&self) -> Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
        vm.set_max_instructions(MAX_INSTRUCTIONS);
        Ok(vm)
    }
}

/// Runs a group's program on `input`.
pub(super) fn run(vm: &mut RegoVM, input: Value) -> Result<Value, String> {
    vm.set_input(input);
    vm.execute().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rule` of `module` on the interpreter and on the VM.
    fn both(module: &str, rule: &str) -> (Value, Value) {
        let input = Value::from_json_str(r#"{"containers": [{"name": "c"}]}"#).unwrap();
        let mut engine = Engine::new();
        engine.add_policy("t.rego".into(), module.into()).unwrap();
        engine.set_input(input.clone());
        let interpreted = engine.eval_rule(rule.into()).unwrap();
        let mut vm = GroupProgram::compile(&engine, rule).unwrap().vm().unwrap();
        (interpreted, run(&mut vm, input).unwrap())
    }

    #[test]
    fn the_vm_agrees_where_no_assignment_is_undefined() {
        for module in [
            "package t\nr if { input.containers[0].name == \"c\" }",
            "package t\nr if { x = input.missing; true }",
            "package t\nr contains n if { some c in input.containers; n := c.name }",
            "package t\nr := 1 if { false } else := 2",
        ] {
            let (interpreted, vm) = both(module, "data.t.r");
            assert_eq!(interpreted, vm, "{module}");
        }
    }

    /// regorus 0.14.1's VM (not used by the server, see the module's
    /// comment) takes `x := <undefined>` for success. When this fails,
    /// regorus has changed: run the differential test on the VM.
    #[test]
    fn regorus_still_takes_an_undefined_assignment_for_success_in_its_vm() {
        let undefined = [
            // The body must fail at the assignment.
            "package t\nr if { x := input.missing; true }",
            // ... also inside an iteration, the policies' usual shape.
            "package t\nr if { some c in input.containers; x := c.missing; true }",
            // `not` over it.
            "package t\nr if { x := input.missing; not x == 1 }",
            // A comprehension counts no element for it.
            "package t\nr := 1 if { count([1 | x := input.missing]) == 1 }",
        ];
        for module in undefined {
            let (interpreted, vm) = both(module, "data.t.r");
            assert_eq!(interpreted, Value::Undefined, "{module}: the interpreter");
            assert_ne!(vm, Value::Undefined, "{module}: the VM now fails the body");
        }
        // A `not` over a helper whose body failed so, and an `else` after
        // a body that failed so, are not taken.
        for (module, expected) in [
            (
                "package t\nf if { x := input.missing }\nr if { not f }",
                Value::from(true),
            ),
            (
                "package t\nr := x if { x := input.missing } else := 2",
                Value::from(2),
            ),
        ] {
            let (interpreted, vm) = both(module, "data.t.r");
            assert_eq!(interpreted, expected, "{module}: the interpreter");
            assert_eq!(vm, Value::Undefined, "{module}: the VM now takes it");
        }
    }
}
