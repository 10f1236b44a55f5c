# Pre-flight, no impact yet: checks this Windows host before anything is loaded or started; step for step
# with preflight.sh where Windows has the same thing to check. Windows PowerShell 5.1 and PowerShell 7.
# Usage: .\scripts\preflight.ps1 [-Variant cpu|gpu] [-Dir C:\chexnet] [-Ports 80,443]
[CmdletBinding()]
param(
    [ValidateSet('cpu', 'gpu')][string]$Variant = 'cpu',
    [string]$Dir = 'C:\chexnet',
    [int[]]$Ports = @(80, 443)
)
$ErrorActionPreference = 'Stop'
$versions = @{}
Get-Content -LiteralPath (Join-Path $PSScriptRoot 'versions.env') | Where-Object { $_ -match '^[A-Z_]+=' } | ForEach-Object {
    $name, $value = $_ -split '=', 2; $versions[$name] = $value
}
$failed = $false
function Ok([string]$m) { Write-Host "  ok    $m" }
function Bad([string]$m) { Write-Host "  FAIL  $m" -ForegroundColor Red; $script:failed = $true }
# A native command's output, its error stream dropped; $LASTEXITCODE is its exit status. Windows PowerShell 5.1
# makes a redirected error stream of a native command a terminating error under 'Stop': not here.
function Invoke-Quiet([string]$Command, [string[]]$Arguments) {
    $ErrorActionPreference = 'Continue'
    & $Command @Arguments 2>$null
}

Write-Host '==> pre-flight checks (nothing is changed)'
# ProductType 1 is a workstation; 2 and 3 are Windows Server, where Docker Desktop is not supported.
$os = Get-CimInstance Win32_OperatingSystem
if ($os.ProductType -ne 1) {
    Bad "$($os.Caption) is Windows Server, which Docker Desktop does not support: run the Linux package in a Linux VM (Hyper-V) on this server instead (see the field guide, 'Windows Server')"
} else { Ok "$($os.Caption) (build $($os.BuildNumber))" }
$dockerVersion = (Invoke-Quiet docker @('version', '--format', '{{.Server.Version}}'))
if ($LASTEXITCODE -ne 0 -or -not $dockerVersion) { Bad 'Docker Desktop is not running (sign in, start it and wait for "Engine running"; set it to start at sign-in)' }
elseif ([version]($dockerVersion -replace '[-+].*$', '') -ge [version]$versions.MIN_DOCKER_VERSION) { Ok "Docker $dockerVersion" }
else { Bad "Docker $dockerVersion is older than $($versions.MIN_DOCKER_VERSION)" }

# Docker Desktop carries Compose v2 ('docker compose'); v1 ('docker-compose') is not used on Windows.
$composeVersion = "$(Invoke-Quiet docker @('compose', 'version', '--short'))" -replace '^v', ''
if ($LASTEXITCODE -ne 0 -or -not $composeVersion) { Bad "'docker compose' is not available (update Docker Desktop)" }
elseif ([version]($composeVersion -replace '[-+].*$', '') -ge [version]$versions.MIN_COMPOSE_V2_VERSION) { Ok "Compose $composeVersion (docker compose)" }
else { Bad "Compose $composeVersion is older than $($versions.MIN_COMPOSE_V2_VERSION)" }

# The drive that will hold Dir (Dir itself may not exist yet: nothing is created here).
$drive = [System.IO.Path]::GetPathRoot($ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($Dir)).TrimEnd('\').TrimEnd(':')
$freeGb = [long][math]::Floor((Get-PSDrive -Name $drive).Free / 1GB)  # whole GB, rounded down as preflight.sh
if ($freeGb -ge [int]$versions.MIN_DISK_GB) { Ok "$freeGb GB free in $Dir" } else { Bad "only $freeGb GB free in $Dir; $($versions.MIN_DISK_GB) GB needed" }

$ramGb = [long][math]::Floor((Get-CimInstance Win32_ComputerSystem).TotalPhysicalMemory / 1GB)
if ($ramGb -ge [int]$versions.MIN_RAM_GB) { Ok "$ramGb GB RAM" } else { Bad "$ramGb GB RAM; $($versions.MIN_RAM_GB) GB needed" }

foreach ($port in $Ports) {
    if (Get-NetTCPConnection -State Listen -LocalPort $port -ErrorAction SilentlyContinue) {
        # On Windows that is often IIS (the field guide says so).
        Bad "port $port is already in use (stop that service or set HTTPS_PORT/HTTP_PORT in .env)"
    } else { Ok "port $port free" }
}

try { $uuid = & (Join-Path $PSScriptRoot 'product-uuid.ps1'); Ok "product_uuid $uuid" }
catch { Bad "cannot read the product UUID: $($_.Exception.Message)" }

if ($Variant -eq 'gpu') {
    # Quoted: unquoted, PowerShell reads 'csv,noheader' as an array and hands nvidia-smi two arguments.
    $driver = "$(@(Invoke-Quiet nvidia-smi @('--query-gpu=driver_version', '--format=csv,noheader'))[0])".Trim()
    if ($LASTEXITCODE -ne 0 -or -not $driver) { Bad "nvidia-smi found no GPU; install the NVIDIA driver (>= $($versions.MIN_NVIDIA_DRIVER_WINDOWS)) or use the cpu package" }
    elseif ([version]$driver -ge [version]$versions.MIN_NVIDIA_DRIVER_WINDOWS) { Ok "NVIDIA driver $driver" }
    else { Bad "NVIDIA driver $driver is older than $($versions.MIN_NVIDIA_DRIVER_WINDOWS)" }
}

if ($failed) { throw 'pre-flight found problems (above); nothing was changed.' }
Write-Host '==> pre-flight passed'
