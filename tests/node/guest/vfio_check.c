/*
 * vfio-check: what QEMU does with the environment a KubeVirt launcher pod gets for a PCI host device.
 *
 * Built static on the host (tests/node/test_passthrough_handoff.py: gcc -static -O2) and run as the container of a
 * launcher-like pod in the node tier's guest node. Usage: vfio-check ENV_NAME, where ENV_NAME is the
 * PCI_RESOURCE_<NAME> variable the device plugin's Allocate answer set (KubeVirt derives it from the resource
 * name). For every address in it (comma-separated), as QEMU's vfio-pci device does:
 *   find the IOMMU group in sysfs, open /dev/vfio/vfio (the container) and check the API version and type1
 *   support, open /dev/vfio/<group> and check the group is viable, put the group into the container, set the type1
 *   IOMMU (v2 when offered, as QEMU prefers), get the device fd by its address, check it is a PCI device, find the
 *   config space region and read the vendor and device ids (vendor 8086 expected), and open
 *   /dev/vfio/devices/vfioN when the kernel made that iommufd cdev.
 * Prints one line "VFIO-CHECK {json}" with every step's result. Exits 1 at once if any step failed; otherwise keeps
 * every fd open (as QEMU holds the device while the VM runs) until SIGTERM, then exits 0.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vfio.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static char out[16384];
static size_t used;
static int failed;

static void put(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + used, sizeof out - used, fmt, ap);
    va_end(ap);
    if (n > 0) used += (size_t)n < sizeof out - used ? (size_t)n : sizeof out - used - 1;
}

/* A step's outcome: "name": true, or "name": "error text" (and the whole check fails). */
static int step(const char *name, int ok, const char *why) {
    if (ok) {
        put("\"%s\":true,", name);
    } else {
        if (errno)
            put("\"%s\":\"%s: %s\",", name, why, strerror(errno));
        else
            put("\"%s\":\"%s\",", name, why);
        failed = 1;
    }
    return ok;
}

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static void list_dir(const char *key, const char *path) {
    DIR *d = opendir(path);
    put("\"%s\":[", key);
    if (d) {
        struct dirent *e;
        int first = 1;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            put("%s\"%s\"", first ? "" : ",", e->d_name);
            first = 0;
        }
        closedir(d);
    }
    put("],");
}

static int check_device(int container, int *iommu_set, const char *address) {
    char path[PATH_MAX + 64], link[PATH_MAX];
    put("\"%s\":{", address);
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", address);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (!step("iommu_group", n > 0, "readlink iommu_group")) goto done;
    link[n] = 0;
    const char *group = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;
    put("\"group\":\"%s\",", group);

    snprintf(path, sizeof path, "/dev/vfio/%s", group);
    int gfd = open(path, O_RDWR | O_CLOEXEC);
    if (!step("open_group", gfd >= 0, path)) goto done;
    struct vfio_group_status status = {.argsz = sizeof status};
    if (!step("group_status", ioctl(gfd, VFIO_GROUP_GET_STATUS, &status) == 0, "VFIO_GROUP_GET_STATUS")) goto done;
    errno = 0;
    if (!step("viable", status.flags & VFIO_GROUP_FLAGS_VIABLE, "group not viable")) goto done;
    if (!step("set_container", ioctl(gfd, VFIO_GROUP_SET_CONTAINER, &container) == 0, "VFIO_GROUP_SET_CONTAINER"))
        goto done;
    if (!*iommu_set) {
        int type = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0 ? VFIO_TYPE1v2_IOMMU : VFIO_TYPE1_IOMMU;
        put("\"iommu_type\":%d,", type);
        if (!step("set_iommu", ioctl(container, VFIO_SET_IOMMU, type) == 0, "VFIO_SET_IOMMU")) goto done;
        *iommu_set = 1;
    }
    int dfd = ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, address);
    if (!step("device_fd", dfd >= 0, "VFIO_GROUP_GET_DEVICE_FD")) goto done;
    struct vfio_device_info info = {.argsz = sizeof info};
    if (!step("device_info", ioctl(dfd, VFIO_DEVICE_GET_INFO, &info) == 0, "VFIO_DEVICE_GET_INFO")) goto done;
    errno = 0;
    if (!step("is_pci", info.flags & VFIO_DEVICE_FLAGS_PCI, "not a vfio-pci device")) goto done;
    put("\"regions\":%u,\"irqs\":%u,", info.num_regions, info.num_irqs);
    struct vfio_region_info region = {.argsz = sizeof region, .index = VFIO_PCI_CONFIG_REGION_INDEX};
    if (!step("config_region", ioctl(dfd, VFIO_DEVICE_GET_REGION_INFO, &region) == 0, "VFIO_DEVICE_GET_REGION_INFO"))
        goto done;
    put("\"config_size\":%llu,", (unsigned long long)region.size);
    uint8_t config[64];
    ssize_t got = pread(dfd, config, sizeof config, (off_t)region.offset);
    if (!step("read_config", got == (ssize_t)sizeof config, "pread config space")) goto done;
    unsigned vendor = config[0] | config[1] << 8, device = config[2] | config[3] << 8;
    unsigned class = config[9] << 16 | config[10] << 8 | config[11];
    put("\"vendor\":\"%04x\",\"device\":\"%04x\",\"class\":\"%06x\",", vendor, device, class);
    errno = 0;
    step("vendor_8086", vendor == 0x8086, "vendor is not 8086");

    /* The iommufd character device, where the kernel has one (Linux 6.2+ with VFIO_DEVICE_CDEV). */
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", address);
    DIR *d = opendir(path);
    put("\"cdev\":");
    int cdev_named = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, "vfio", 4) != 0) continue;
            cdev_named = 1;
            snprintf(path, sizeof path, "/dev/vfio/devices/%s", e->d_name);
            if (access(path, F_OK) != 0) {
                put("{\"name\":\"%s\",\"node\":false},", e->d_name);
            } else {
                int cfd = open(path, O_RDWR | O_CLOEXEC);
                put("{\"name\":\"%s\",\"node\":true,\"opened\":%s},", e->d_name, cfd >= 0 ? "true" : "false");
                if (cfd < 0) failed = 1;
            }
            break;
        }
        closedir(d);
    }
    if (!cdev_named) put("null,");
done:
    if (out[used - 1] == ',') used--;
    put("},");
    return !failed;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    put("{");
    const char *name = argc > 1 ? argv[1] : "";
    const char *value = getenv(name);
    put("\"env\":\"%s\",\"value\":\"%s\",", name, value ? value : "");
    list_dir("dev_vfio", "/dev/vfio");
    errno = 0;
    if (step("env_set", value && *value, "the variable is not set")) {
        int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
        if (step("open_container", container >= 0, "/dev/vfio/vfio")) {
            errno = 0;
            step("api_version", ioctl(container, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "VFIO_GET_API_VERSION");
            step("type1", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) > 0, "no type1 IOMMU");
            char *list = strdup(value);
            int iommu_set = 0, count = 0;
            put("\"devices\":{");
            for (char *save = NULL, *a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
                check_device(container, &iommu_set, a);
                count++;
            }
            if (out[used - 1] == ',') used--;
            put("},\"count\":%d,", count);
        }
    }
    put("\"ok\":%s}", failed ? "false" : "true");
    printf("VFIO-CHECK %s\n", out);
    fflush(stdout);
    if (failed) return 1;
    while (!stop) pause(); /* hold every fd, as QEMU does while the VM runs */
    return 0;
}
