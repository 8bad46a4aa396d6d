use super::exposition::{Collector, Exposition, MetricKind};

/// The standard `process_*` families, read from `/proc/self` on each scrape (Linux; on other
/// systems it adds nothing): `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_threads` and
/// `process_start_time_seconds`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat` times (`USER_HZ`, 100 on every Linux port).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    threads: f64,
    start_time: f64,
    virtual_bytes: f64,
    resident_bytes: f64,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

/// Parses `/proc/self/stat` (fields after the parenthesised command name), with the boot
/// time from `/proc/stat` and the page size for resident pages.
fn parse_stat(stat: &str, boot_time: f64, page_size: f64) -> Option<Process> {
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field n is f[n - 3].
    let field = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    Some(Process {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        threads: field(20)?,
        start_time: boot_time + field(22)? / USER_HZ,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
        open_fds: None,
        max_fds: None,
    })
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

fn vm_rss(status: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

fn max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let mut p = parse_stat(&stat, boot, 4096.0)?;
    // `VmRSS` is exact whatever the page size; the stat estimate assumes 4 KiB pages.
    if let Some(rss) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss(&s))
    {
        p.resident_bytes = rss;
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    p.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_fds(&l));
    Some(p)
}

impl Collector for ProcessCollector {
    fn collect(&self, out: &mut Exposition) {
        let Some(p) = read() else { return };
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some(p.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(p.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                Some(p.threads),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                Some(p.start_time),
            ),
        ];
        out.family(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent, in seconds.",
            MetricKind::Counter,
        )
        .sample(&[], p.cpu_seconds);
        for (name, help, value) in gauges {
            if let Some(v) = value {
                out.family(name, help, MetricKind::Gauge).sample(&[], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 \
                    12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(stat, 1_700_000_000.0, 4096.0).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7.0);
        assert_eq!(p.start_time, 1_700_000_000.0 + 123.45);
        assert_eq!(p.virtual_bytes, 104_857_600.0);
        assert_eq!(p.resident_bytes, 2560.0 * 4096.0);
    }

    #[test]
    fn limits_and_boot_time_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024.0));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048.0 * 1024.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_memory_fds_and_threads() {
        let mut out = Exposition::default();
        ProcessCollector.collect(&mut out);
        let text = out.into_string();
        for name in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_threads ",
            "process_start_time_seconds ",
        ] {
            let v: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} missing in {text}"))
                .parse()
                .unwrap();
            assert!(v >= 0.0);
        }
    }
}
