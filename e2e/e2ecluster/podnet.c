/*
 * podnet.c: the e2e kubelet stand-in's per-pod network, for processes run from images.
 *
 * Pods run with buildah's chroot isolation share the host's network namespace, so two pods
 * listening on all addresses at the same port (two operator replicas on :8080, the facade and
 * a worker on :8000) would collide, where a real kubelet gives each pod a namespace of its own.
 * Preloaded into the pod's process (LD_PRELOAD), this bind() turns a wildcard address
 * (0.0.0.0, or :: as ::ffff:<ip> on a dual-stack socket) into the pod's loopback IP, read from
 * E2E_POD_IP; every other bind, and every call when E2E_POD_IP is unset, goes through unchanged.
 * It calls the system call directly, so it needs nothing newer than the image's C library.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    const char *ip = getenv("E2E_POD_IP");
    struct in_addr pod;
    if (ip == NULL || addr == NULL || inet_pton(AF_INET, ip, &pod) != 1) {
        return (int)syscall(SYS_bind, fd, addr, len);
    }
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr = pod;
            return (int)syscall(SYS_bind, fd, &in4, sizeof in4);
        }
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
            memset(&in6.sin6_addr, 0, sizeof in6.sin6_addr);
            in6.sin6_addr.s6_addr[10] = 0xff;
            in6.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&in6.sin6_addr.s6_addr[12], &pod, sizeof pod);
            return (int)syscall(SYS_bind, fd, &in6, sizeof in6);
        }
    }
    return (int)syscall(SYS_bind, fd, addr, len);
}
