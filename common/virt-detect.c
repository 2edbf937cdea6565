/*
 * virt-detect.c: the KVM probe (see virt-detect.h).
 */
#include "virt-detect.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib.h>

static char *
newest_kernel(void)
{
    g_autoptr(GDir) dir = g_dir_open("/boot", 0, NULL);
    const char *name;
    char *best = NULL;

    while (dir && (name = g_dir_read_name(dir))) {
        if (!g_str_has_prefix(name, "vmlinuz-"))
            continue;
        if (!best || strverscmp(name, best) > 0) {
            g_free(best);
            best = g_strdup(name);
        }
    }
    if (!best)
        return NULL;
    {
        char *path = g_build_filename("/boot", best, NULL);
        g_free(best);
        return path;
    }
}

static bool
probe(void)
{
    g_autofree char *kernel = newest_kernel();
    const char *argv[] = {"qemu-system-x86_64",
                          "-M",
                          "pc",
                          "-accel",
                          "kvm",
                          "-m",
                          "128",
                          "-nographic",
                          "-no-reboot",
                          "-kernel",
                          NULL,
                          "-append",
                          "console=ttyS0 panic=-1",
                          NULL};
    g_autoptr(GString) out = g_string_new(NULL);
    gint64 deadline;
    GPid pid;
    int fd = -1;
    bool ok = false;

    if (access("/dev/kvm", R_OK | W_OK) != 0 || !kernel)
        return false;
    argv[10] = kernel;
    if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                  G_SPAWN_SEARCH_PATH |
                                      G_SPAWN_DO_NOT_REAP_CHILD |
                                      G_SPAWN_STDERR_TO_DEV_NULL,
                                  NULL, NULL, &pid, NULL, &fd, NULL, NULL))
        return false;
    deadline = g_get_monotonic_time() + VIRT_PROBE_SECONDS * G_USEC_PER_SEC;
    while (!ok && g_get_monotonic_time() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char buf[4096];
        ssize_t n;

        if (poll(&p, 1, 200) <= 0)
            continue;
        n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        g_string_append_len(out, buf, n);
        ok = strstr(out->str, "Linux version") != NULL;
        if (out->len > 1024 * 1024)
            break;
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(fd);
    return ok;
}

/* the answer: unset until spore_kvm_set or the first probe */
static gsize kvm_once = 0;
static bool kvm_answer;

bool
spore_kvm_works(void)
{
    if (g_once_init_enter(&kvm_once)) {
        kvm_answer = probe();
        g_once_init_leave(&kvm_once, 1);
    }
    return kvm_answer;
}

bool
spore_kvm_set(bool works)
{
    if (!g_once_init_enter(&kvm_once))
        return false; /* answered already */
    kvm_answer = works;
    g_once_init_leave(&kvm_once, 1);
    return true;
}
