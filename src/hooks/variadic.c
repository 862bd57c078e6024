/* execl, execle and execlp: C-variadic, which a stable Rust function cannot be, so the
 * only C in libqnet. Each collects its argument list into an argv array, as glibc's do,
 * and calls execve or execvpe, which are libqnet's hooks (src/hooks/exec.rs): the same
 * checks as every exec (setuid and static programs refused, LD_PRELOAD kept in the
 * child's environment). glibc's own execl* call its internal execve, which no hook sees.
 * build.rs links this in and exports the three names from libqnet.so. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

extern char **environ;
int execvpe(const char *file, char *const argv[], char *const envp[]);

/* The number of arguments after `arg` up to the terminating NULL (glibc's rule: more
 * than INT_MAX - 1 is E2BIG). */
static ptrdiff_t count_args(const char *arg, va_list ap) {
    ptrdiff_t n = 1;
    if (arg == NULL)
        return 0;
    while (va_arg(ap, const char *) != NULL)
        if (++n == INT_MAX)
            return -1;
    return n;
}

/* argv[0..n) from `arg` and the list, then NULL; returns what follows the NULL (execle's
 * envp) when `tail` is set. */
static char *const *fill_args(char **argv, ptrdiff_t n, const char *arg, va_list ap,
                              int tail) {
    argv[0] = (char *)arg;
    for (ptrdiff_t i = 1; i < n; i++)
        argv[i] = va_arg(ap, char *);
    argv[n] = NULL;
    if (n > 0)
        (void)va_arg(ap, char *); /* the NULL that ended the list */
    return tail ? va_arg(ap, char *const *) : NULL;
}

#define COLLECT(first, tail, envp)                 \
    va_list ap;                                    \
    va_start(ap, first);                           \
    ptrdiff_t n = count_args(first, ap);           \
    va_end(ap);                                    \
    if (n < 0) {                                   \
        errno = E2BIG;                             \
        return -1;                                 \
    }                                              \
    char *argv[n + 1];                             \
    va_start(ap, first);                           \
    envp = fill_args(argv, n, first, ap, tail);    \
    va_end(ap)

int execl(const char *path, const char *arg, ...) {
    char *const *envp;
    COLLECT(arg, 0, envp);
    (void)envp;
    return execve(path, argv, environ);
}

int execle(const char *path, const char *arg, ...) {
    char *const *envp;
    COLLECT(arg, 1, envp);
    return execve(path, argv, envp);
}

int execlp(const char *file, const char *arg, ...) {
    char *const *envp;
    COLLECT(arg, 0, envp);
    (void)envp;
    return execvpe(file, argv, environ);
}
