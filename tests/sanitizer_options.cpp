// The unit tests build with -fsanitize=undefined, whose reports are
// otherwise only printed: any undefined behaviour fails the run.
extern "C" const char *__ubsan_default_options() {
    return "halt_on_error=1:print_stacktrace=1";
}
