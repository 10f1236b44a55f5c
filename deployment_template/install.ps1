# Install (or upgrade) CheXNet from this unpacked offline package on Windows with Docker Desktop.
# Reads as a table of contents: pre-flight (no impact) -> verify and load images -> configure (never
# overwrites .env; writes the host's product_uuid for the container) -> up -> wait until healthy ->
# smoke prediction (with -TokenFile). An upgrade that does not turn healthy is rolled back.
# Windows PowerShell 5.1 and PowerShell 7; run as Administrator.
[CmdletBinding()]
param(
    [string]$Dir = 'C:\chexnet',
    [ValidateSet('cpu', 'gpu')][string]$Variant,
    [string]$TokenFile,
    [switch]$SkipPreflight,
    [int]$TimeoutSeconds = 600
)
$ErrorActionPreference = 'Stop'
$package = $PSScriptRoot
$version = (Get-Content (Join-Path $package 'VERSION')).Trim()
if (-not $Variant) { $Variant = (Get-Content (Join-Path $package 'VARIANT')).Trim() }

function Invoke-Native([string]$What, [scriptblock]$Command) {
    & $Command
    if ($LASTEXITCODE -ne 0) { throw "$What failed (exit $LASTEXITCODE)." }
}
function Get-EnvValue([string]$Name) {
    $envFile = Join-Path $Dir '.env'
    if (-not (Test-Path $envFile)) { return $null }
    $line = Get-Content $envFile | Where-Object { $_ -match "^$Name=" } | Select-Object -Last 1
    if ($line) { return ($line -split '=', 2)[1] } else { return $null }
}
function Set-EnvVersion([string]$Value) {
    $envFile = Join-Path $Dir '.env'
    Copy-Item $envFile "$envFile.bak" -Force
    $text = (Get-Content $envFile) -replace '^CHEXNET_VERSION=.*', "CHEXNET_VERSION=$Value"
    [System.IO.File]::WriteAllLines($envFile, $text)
}
function Invoke-Compose([string[]]$Arguments) {
    $files = @('-f', 'docker-compose.yml')
    if ((Get-EnvValue 'CHEXNET_VARIANT') -eq 'gpu') { $files += @('-f', 'docker-compose.gpu.yml') }
    Push-Location $Dir
    try {
        & docker compose @files @Arguments
        if ($LASTEXITCODE -ne 0) { throw "docker compose $($Arguments -join ' ') failed (exit $LASTEXITCODE)." }
    } finally { Pop-Location }
}
function Wait-Healthy {
    Write-Host "==> waiting for the API to turn healthy (up to $TimeoutSeconds s)"
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ((Get-Date) -lt $deadline) {
        Push-Location $Dir
        try { $api = (& docker compose ps -q api) } finally { Pop-Location }
        if ($LASTEXITCODE -eq 0 -and $api) {
            $state = (& docker inspect -f '{{.State.Health.Status}}' $api 2>$null)
            if ($LASTEXITCODE -eq 0 -and $state -eq 'healthy') { Write-Host '==> API healthy'; return $true }
        }
        Start-Sleep -Seconds 5
    }
    return $false
}
function Start-Version([string]$Value) {
    Write-Host "==> starting CheXNet $Value"
    Invoke-Compose @('up', '-d', '--remove-orphans')
    return (Wait-Healthy)
}

$previous = Get-EnvValue 'CHEXNET_VERSION'

# 1. pre-flight
if ($SkipPreflight) { Write-Warning 'pre-flight skipped (-SkipPreflight)' }
else {
    $ports = @(80, 443)
    if (Test-Path (Join-Path $Dir '.env')) { $ports = @([int](Get-EnvValue 'HTTP_PORT'), [int](Get-EnvValue 'HTTPS_PORT')) }
    if ($previous) { $ports = @() }  # our own running stack holds them: an upgrade
    & (Join-Path $package 'scripts\preflight.ps1') -Variant $Variant -Dir $Dir -Ports $ports
}

# 2. verify and load
& (Join-Path $package 'scripts\load-images.ps1') -Package $package

# 3. configure
Write-Host "==> configuring $Dir"
foreach ($sub in 'license\keys', 'models', 'audit', 'certs') { New-Item -ItemType Directory -Force -Path (Join-Path $Dir $sub) | Out-Null }
foreach ($file in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env.example') { Copy-Item (Join-Path $package $file) $Dir -Force }
Copy-Item (Join-Path $package 'license\keys\*.pem') (Join-Path $Dir 'license\keys') -Force
$envFile = Join-Path $Dir '.env'
if (Test-Path $envFile) { Write-Host "==> keeping the existing $envFile" }
else {
    $text = (Get-Content (Join-Path $package '.env.example')) -replace '^CHEXNET_VERSION=.*', "CHEXNET_VERSION=$version" -replace '^CHEXNET_VARIANT=.*', "CHEXNET_VARIANT=$Variant"
    [System.IO.File]::WriteAllLines($envFile, $text)
    Write-Host "==> wrote $envFile from .env.example"
}
# Docker Desktop's VM cannot see the host's SMBIOS: the container reads this file instead.
& (Join-Path $package 'scripts\product-uuid.ps1') -OutFile (Join-Path $Dir 'product_uuid') | Out-Null

# 4-5. up and wait (with rollback on a failed upgrade)
if ($previous -and $previous -ne $version) {
    Write-Host "==> upgrade $previous -> $version"
    Set-EnvVersion $version
    if (-not (Start-Version $version)) {
        Write-Warning "version $version did not turn healthy; rolling back to $previous"
        Set-EnvVersion $previous
        if (-not (Start-Version $previous)) { throw "rollback to $previous did not turn healthy either; see 'docker compose logs api'." }
        throw "upgrade to $version failed and was rolled back to $previous."
    }
} elseif (-not (Start-Version $version)) {
    throw "the API did not turn healthy; see 'docker compose logs api' in $Dir."
}

# 6. smoke prediction
if ($TokenFile) {
    Write-Host '==> smoke prediction through nginx'
    Push-Location $Dir
    try {
        Get-Content $TokenFile | & docker compose exec -T api python -m chexnet.api.smoke --url https://nginx
        if ($LASTEXITCODE -ne 0) { throw 'the smoke prediction failed (see above).' }
    } finally { Pop-Location }
} else { Write-Warning 'no -TokenFile: skipped the smoke prediction.' }
Write-Host "==> CheXNet $version ($Variant) is running from $Dir"
