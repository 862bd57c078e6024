/* The exec and spawn paths glibc takes internally, where no exec hook used to look:
 *   execle URL WANT    curl run by execle with an environment without LD_PRELOAD
 *   execlp URL WANT    curl found by execlp after unsetenv("LD_PRELOAD")
 *   args               execl with more arguments than registers carry
 *   refused PROGRAM    execl of PROGRAM (setuid, static) fails with EPERM
 *   refused-syscall PROGRAM   the same through syscall(SYS_execve, ...)
 *   wordexp URL WANT   $(curl URL) expanded by wordexp after unsetenv("LD_PRELOAD")
 * Children's output comes back through a pipe and is compared with WANT. */
#include "mx.h"
#include <sys/syscall.h>
#include <sys/wait.h>
#include <wordexp.h>

/* Run `child` in a forked process with stdout into a pipe: its output (trimmed) in
 * `out`, its wait status returned. */
static int run_child(void (*child)(char **), char **args, char *out, size_t n) {
    int p[2];
    if (pipe(p) != 0)
        return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        child(args);
        printf("exec failed: %s\n", strerror(errno));
        fflush(stdout);
        _exit(errno == EPERM ? 42 : 43);
    }
    close(p[1]);
    size_t got = mx_read_full(p[0], out, n - 1, 20000);
    close(p[0]);
    out[got] = 0;
    while (got > 0 && (out[got - 1] == '\n' || out[got - 1] == ' '))
        out[--got] = 0;
    int st = -1;
    waitpid(pid, &st, 0);
    return st;
}

static void do_execle(char **a) {
    /* The environment a program builds for a child: no LD_PRELOAD. */
    static char cfg[4096];
    snprintf(cfg, sizeof cfg, "QNET_CONFIG=%s", getenv("QNET_CONFIG") ? getenv("QNET_CONFIG") : "");
    char *env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", cfg, NULL};
    execle("/bin/sh", "sh", "-c", "exec curl -sS --max-time 10 \"$0\"", a[0], (char *)0, env);
}
static void do_execlp(char **a) {
    execlp("curl", "curl", "-sS", "--max-time", "10", a[0], (char *)0);
}
static void do_args(char **a) {
    (void)a;
    execl("/bin/echo", "echo", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10",
          (char *)0);
}
static void do_refused_syscall(char **a) {
    char *argv[] = {a[0], NULL};
    syscall(SYS_execve, a[0], argv, environ);
}
static void do_refused(char **a) {
    execl(a[0], a[0], "-sS", "--max-time", "5", "http://10.78.0.1/token.txt", (char *)0);
}

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "";
    char out[4096];
    if (!strcmp(c, "execle") || !strcmp(c, "execlp")) {
        if (!strcmp(c, "execlp"))
            unsetenv("LD_PRELOAD");
        int st = run_child(!strcmp(c, "execle") ? do_execle : do_execlp, argv + 2, out, sizeof out);
        CHECK(st == 0 && !strcmp(out, argv[3]), "%s curl %s: got '%s' (status %#x)", c, argv[2],
              out, st);
    } else if (!strcmp(c, "args")) {
        int st = run_child(do_args, NULL, out, sizeof out);
        CHECK(st == 0 && !strcmp(out, "a1 a2 a3 a4 a5 a6 a7 a8 a9 a10"),
              "execl with 11 arguments: got '%s' (status %#x)", out, st);
    } else if (!strcmp(c, "refused") || !strcmp(c, "refused-syscall")) {
        int st = run_child(!strcmp(c, "refused") ? do_refused : do_refused_syscall, argv + 2, out,
                           sizeof out);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42, "%s %s refused with EPERM: got '%s' (status %#x)",
              c, argv[2], out, st);
    } else if (!strcmp(c, "wordexp")) {
        unsetenv("LD_PRELOAD");
        char words[512];
        snprintf(words, sizeof words, "$(curl -sS --max-time 10 %s) two", argv[2]);
        wordexp_t we;
        int r = wordexp(words, &we, 0);
        CHECK(r == 0 && we.we_wordc == 2 && !strcmp(we.we_wordv[0], argv[3]) &&
                  !strcmp(we.we_wordv[1], "two"),
              "wordexp $(curl %s): got %d, %zu words, first '%s'", argv[2], r,
              r == 0 ? we.we_wordc : 0, r == 0 && we.we_wordc ? we.we_wordv[0] : "");
        if (r == 0)
            wordfree(&we);
        r = wordexp("$(true)", &we, WRDE_NOCMD);
        CHECK(r == WRDE_CMDSUB, "WRDE_NOCMD still refuses a command substitution: %d", r);
    } else {
        mx_fail("unknown mode '%s'", c);
    }
    return mx_failed;
}
